// Package verdict is a small Go client for verdictd, the service that answers "is this IP
// address real human traffic?" from a stored verdict history, asking ClickPatrol (one paid
// click per request) only when no fresh verdict is known.
//
// The messages are the generated ones of verdict.proto, package verdictd/client/go/verdictv1
// (generated at build time, never committed). A Client adds what every caller would otherwise
// write again:
//
//   - the caller's identity on every call: `authorization: Bearer <key>` (WithAPIKey, keyed
//     mode) or `x-caller` (WithCaller, open mode);
//   - TLS with given roots (WithRootCAs), mutual TLS (WithClientCert), a server name
//     override (WithServerName);
//   - a deadline on every call (WithTimeout, 10 s by default), applied when the context has
//     none or a later one;
//   - CheckBatch split at the server's max_batch (asked once), results in input order;
//   - ListVerdictHistory following page tokens to the end.
//
// Errors are gRPC status errors: status.Code(err) and status.Convert(err).Message() give the
// server's code and message (codes.DeadlineExceeded when the deadline passed).
//
// Nothing is retried. A CheckIp or CheckBatch that failed may still have spent a click: the
// request may have reached ClickPatrol before the failure (a deadline that expired while
// verdictd waited for ClickPatrol, a connection lost before the answer), and a retry could
// spend another. Retry only where paying twice is acceptable.
package verdict

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"verdictd/client/go/verdictv1"
)

// DefaultTimeout is the deadline of every call unless WithTimeout says otherwise.
const DefaultTimeout = 10 * time.Second

// fallbackMaxBatch sizes batches when a server reports no max_batch (verdictd's own default).
const fallbackMaxBatch = 1000

// Option configures a Client.
type Option func(*config) error

type config struct {
	rootCAs    []byte
	certPEM    []byte
	keyPEM     []byte
	serverName string
	apiKey     string
	caller     string
	timeout    time.Duration
	dialOpts   []grpc.DialOption
}

// WithRootCAs turns TLS on and trusts the PEM CA certificates given (instead of the system's).
func WithRootCAs(pem []byte) Option {
	return func(c *config) error {
		if len(pem) == 0 {
			return errors.New("verdict: WithRootCAs: no PEM data")
		}
		c.rootCAs = pem
		return nil
	}
}

// WithClientCert presents a client certificate (mutual TLS; turns TLS on). Both are PEM.
func WithClientCert(certPEM, keyPEM []byte) Option {
	return func(c *config) error {
		c.certPEM, c.keyPEM = certPEM, keyPEM
		return nil
	}
}

// WithServerName is the name the server's certificate must carry (default: the address's host).
func WithServerName(name string) Option {
	return func(c *config) error {
		c.serverName = name
		return nil
	}
}

// WithAPIKey sends `authorization: Bearer <key>` on every call (keyed mode). Read the key from
// the environment or a file, not a command-line flag: flags show in ps.
func WithAPIKey(key string) Option {
	return func(c *config) error {
		if key == "" {
			return errors.New("verdict: WithAPIKey: empty key")
		}
		c.apiKey = key
		return nil
	}
}

// WithCaller sends `x-caller: <name>` on every call: the caller's name in open mode (a keyed
// server ignores it).
func WithCaller(name string) Option {
	return func(c *config) error {
		c.caller = name
		return nil
	}
}

// WithTimeout sets the deadline of every call (default DefaultTimeout). A context with an
// earlier deadline keeps its own. For CheckBatch and ListVerdictHistory it bounds each RPC
// (each chunk, each page); bound the whole with the context.
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("verdict: WithTimeout(%v): must be positive", d)
		}
		c.timeout = d
		return nil
	}
}

// WithDialOptions passes further options to grpc.Dial.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) error {
		c.dialOpts = append(c.dialOpts, opts...)
		return nil
	}
}

// Client calls one verdictd. It is safe for concurrent use; Close it when done.
type Client struct {
	conn    *grpc.ClientConn
	stub    verdictv1.VerdictServiceClient
	md      metadata.MD
	timeout time.Duration

	mu       sync.Mutex
	maxBatch int // 0 until learnt from GetServerInfo
}

// New makes a Client for address ("host:port"). Without WithRootCAs or WithClientCert the
// connection is plaintext. It does not connect: the first call does, and a server that cannot
// be reached is that call's error (codes.Unavailable or codes.DeadlineExceeded).
func New(address string, opts ...Option) (*Client, error) {
	cfg := config{timeout: DefaultTimeout}
	for _, opt := range opts {
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	dialOpts := []grpc.DialOption{}
	if cfg.rootCAs != nil || cfg.certPEM != nil || cfg.keyPEM != nil {
		tlsConfig := &tls.Config{ServerName: cfg.serverName, MinVersion: tls.VersionTLS12}
		if cfg.rootCAs != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cfg.rootCAs) {
				return nil, errors.New("verdict: WithRootCAs: no certificate found in the PEM data")
			}
			tlsConfig.RootCAs = pool
		}
		if cfg.certPEM != nil || cfg.keyPEM != nil {
			cert, err := tls.X509KeyPair(cfg.certPEM, cfg.keyPEM)
			if err != nil {
				return nil, fmt.Errorf("verdict: WithClientCert: %w", err)
			}
			tlsConfig.Certificates = []tls.Certificate{cert}
		}
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
		if cfg.serverName != "" {
			dialOpts = append(dialOpts, grpc.WithAuthority(cfg.serverName))
		}
	} else {
		if cfg.serverName != "" {
			return nil, errors.New("verdict: WithServerName needs TLS (WithRootCAs)")
		}
		dialOpts = append(dialOpts, grpc.WithInsecure()) // grpc-go 1.33: no insecure package yet
	}
	dialOpts = append(dialOpts, cfg.dialOpts...)
	conn, err := grpc.Dial(address, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("verdict: %s: %w", address, err)
	}
	md := metadata.MD{}
	if cfg.apiKey != "" {
		md.Set("authorization", "Bearer "+cfg.apiKey)
	} else if cfg.caller != "" {
		md.Set("x-caller", cfg.caller)
	}
	return &Client{
		conn:    conn,
		stub:    verdictv1.NewVerdictServiceClient(conn),
		md:      md,
		timeout: cfg.timeout,
	}, nil
}

// Close closes the connection; calls in flight fail with codes.Canceled.
func (c *Client) Close() error {
	return c.conn.Close()
}

// callContext is ctx with the caller's metadata and the default deadline (context.WithTimeout
// keeps an earlier deadline of ctx).
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if len(c.md) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, metadata.Join(outgoing(ctx), c.md))
	}
	return context.WithTimeout(ctx, c.timeout)
}

func outgoing(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}

// CheckIp asks for one verdict. req.MaxAge unset means the server's freshness limit, zero
// always asks ClickPatrol; req.CacheOnly never does (codes.NotFound when nothing fresh is
// stored). A failed call may still have spent a click, so it is not retried.
func (c *Client) CheckIp(ctx context.Context, req *verdictv1.CheckIpRequest) (*verdictv1.CheckIpResponse, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	return c.stub.CheckIp(ctx, req)
}

// GetServerInfo asks for the server's limits and mode, and who it thinks the caller is.
func (c *Client) GetServerInfo(ctx context.Context) (*verdictv1.GetServerInfoResponse, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	info, err := c.stub.GetServerInfo(ctx, &verdictv1.GetServerInfoRequest{})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.maxBatch == 0 {
		c.maxBatch = int(info.GetMaxBatch())
		if c.maxBatch <= 0 {
			c.maxBatch = fallbackMaxBatch
		}
	}
	c.mu.Unlock()
	return info, nil
}

// BatchResult is one item's outcome in CheckBatch: Response, or Err (a gRPC status error
// carrying the item's code and message: status.Code(r.Err) == codes.InvalidArgument for a
// malformed IP).
type BatchResult struct {
	Response *verdictv1.CheckIpResponse
	Err      error
}

func (c *Client) batchSize(ctx context.Context) (int, error) {
	c.mu.Lock()
	n := c.maxBatch
	c.mu.Unlock()
	if n > 0 {
		return n, nil
	}
	if _, err := c.GetServerInfo(ctx); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxBatch, nil
}

// CheckBatch checks many items: they are sent in CheckBatch calls of at most the server's
// max_batch (learnt once from GetServerInfo), one after another, and the results come back in
// input order, one per item. An item the server refused has its own Err; the call's error is
// for a whole CheckBatch call that failed. Then the results of the calls answered before it
// are returned along with the error (the items after them have no result); a failed call may
// still have spent clicks, so it is not retried.
func (c *Client) CheckBatch(ctx context.Context, items []*verdictv1.CheckIpRequest) ([]BatchResult, error) {
	if len(items) == 0 {
		return nil, nil
	}
	size, err := c.batchSize(ctx)
	if err != nil {
		return nil, err
	}
	results := make([]BatchResult, 0, len(items))
	for start := 0; start < len(items); start += size {
		end := start + size
		if end > len(items) {
			end = len(items)
		}
		chunk, err := c.checkChunk(ctx, items[start:end])
		if err != nil {
			return results, err
		}
		results = append(results, chunk...)
	}
	return results, nil
}

func (c *Client) checkChunk(ctx context.Context, items []*verdictv1.CheckIpRequest) ([]BatchResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.stub.CheckBatch(ctx, &verdictv1.CheckBatchRequest{Items: items})
	if err != nil {
		return nil, err
	}
	if len(resp.GetResults()) != len(items) {
		return nil, status.Errorf(codes.Internal, "verdict: CheckBatch of %d items answered %d results",
			len(items), len(resp.GetResults()))
	}
	out := make([]BatchResult, len(items))
	for i, r := range resp.GetResults() {
		switch o := r.GetOutcome().(type) {
		case *verdictv1.CheckBatchResult_Result:
			out[i].Response = o.Result
		case *verdictv1.CheckBatchResult_Error:
			out[i].Err = status.Error(codes.Code(o.Error.GetCode()), o.Error.GetMessage())
		default:
			out[i].Err = status.Errorf(codes.Internal, "verdict: CheckBatch result %d has no outcome", i)
		}
	}
	return out, nil
}

// ListVerdictHistory returns every stored verdict for req.Ip in [req.Since, req.Until), newest
// first, following page tokens from req.PageToken (normally empty) to the last page; req is
// not modified. The deadline applies to each page.
func (c *Client) ListVerdictHistory(ctx context.Context, req *verdictv1.ListVerdictHistoryRequest) ([]*verdictv1.Verdict, error) {
	page := proto.Clone(req).(*verdictv1.ListVerdictHistoryRequest)
	var verdicts []*verdictv1.Verdict
	for {
		resp, err := c.historyPage(ctx, page)
		if err != nil {
			return nil, err
		}
		verdicts = append(verdicts, resp.GetVerdicts()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return verdicts, nil
		}
		if next == page.PageToken {
			return nil, status.Error(codes.Internal, "verdict: ListVerdictHistory answered the same page token again")
		}
		page.PageToken = next
	}
}

func (c *Client) historyPage(ctx context.Context, req *verdictv1.ListVerdictHistoryRequest) (*verdictv1.ListVerdictHistoryResponse, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	return c.stub.ListVerdictHistory(ctx, req)
}

// GetUsage returns clicks, cache hits, requests and upstream errors per caller, and the plan's
// allowance. req.Caller "" means every caller: open mode and the auditor role only
// (codes.PermissionDenied otherwise).
func (c *Client) GetUsage(ctx context.Context, req *verdictv1.GetUsageRequest) (*verdictv1.GetUsageResponse, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	return c.stub.GetUsage(ctx, req)
}
