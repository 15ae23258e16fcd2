// End-to-end test of the Go client (package verdictd/client/go) against the real verdictd and the
// simulated ClickPatrol, each started on 127.0.0.1 port 0 (--port_file) in a temp dir. Built by
// tests/go/CMakeLists.txt (go test -c) and run by ctest (go_client) with VERDICTD_BIN, SIM_BIN and
// VERDICT_PKI_SCRIPT (tests/clients/make_test_pki.sh) set.
package clienttest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	verdict "verdictd/client/go"
	"verdictd/client/go/verdictv1"
)

const (
	token    = "go-client-test-token"
	goodKey  = "vk_go_good_7d3a91c04be25f68"
	otherKey = "vk_go_other_e5b28f1d9c7a4036"
)

var (
	tmp       string
	children  []*exec.Cmd
	simPort   int // the fast simulator
	openPort  int // open mode, --max_batch=2, fast simulator
	keyedPort int // keyed mode over TLS, fast simulator
	mtlsPort  int // open mode, mutual TLS, fast simulator
	slowPort  int // open mode, plaintext, a simulator with --latency=3s
	pki       string
)

func TestMain(m *testing.M) {
	code := 1
	func() {
		defer cleanup()
		if err := setUp(); err != nil {
			fmt.Fprintln(os.Stderr, "set-up failed:", err)
			return
		}
		code = m.Run()
	}()
	os.Exit(code)
}

func setUp() error {
	var err error
	if tmp, err = os.MkdirTemp("", "verdict_go_test_"); err != nil {
		return err
	}
	verdictd, sim := os.Getenv("VERDICTD_BIN"), os.Getenv("SIM_BIN")
	pkiScript := os.Getenv("VERDICT_PKI_SCRIPT")
	if verdictd == "" || sim == "" || pkiScript == "" {
		return fmt.Errorf("VERDICTD_BIN, SIM_BIN and VERDICT_PKI_SCRIPT must be set")
	}
	if simPort, err = start("sim", sim, nil, "--listen=127.0.0.1:0", "--token="+token); err != nil {
		return err
	}
	slowSimPort, err := start("slow_sim", sim, nil, "--listen=127.0.0.1:0", "--token="+token,
		"--latency=3s")
	if err != nil {
		return err
	}

	pki = filepath.Join(tmp, "pki")
	if out, err := exec.Command(pkiScript, pki).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", pkiScript, err, out)
	}
	keys := filepath.Join(tmp, "api_keys")
	sum := sha256.Sum256([]byte(goodKey))
	if err := os.WriteFile(keys, []byte("go-team "+hex.EncodeToString(sum[:])+"\n"), 0o600); err != nil {
		return err
	}

	env := []string{"CLICKPATROL_TOKEN=" + token}
	common := func(name string, sim int, extra ...string) []string {
		return append([]string{
			"--listen=127.0.0.1:0",
			"--db=" + filepath.Join(tmp, name+".db"),
			fmt.Sprintf("--upstream_url=http://127.0.0.1:%d/", sim),
		}, extra...)
	}
	tlsFlags := []string{
		"--tls_cert=" + filepath.Join(pki, "server.pem"),
		"--tls_key=" + filepath.Join(pki, "server.key"),
	}
	if openPort, err = start("open", verdictd, env, common("open", simPort, "--max_batch=2")...); err != nil {
		return err
	}
	keyedArgs := common("keyed", simPort, append(tlsFlags, "--api_keys_file="+keys)...)
	if keyedPort, err = start("keyed", verdictd, env, keyedArgs...); err != nil {
		return err
	}
	mtlsArgs := common("mtls", simPort, append(tlsFlags, "--tls_client_ca="+filepath.Join(pki, "ca.pem"))...)
	if mtlsPort, err = start("mtls", verdictd, env, mtlsArgs...); err != nil {
		return err
	}
	if slowPort, err = start("slow", verdictd, env, common("slow", slowSimPort)...); err != nil {
		return err
	}
	return nil
}

// start runs bin with args and --port_file, and returns the port it wrote there. The child gets
// SIGKILL if this process dies first (Pdeathsig), and cleanup stops it otherwise.
func start(name, bin string, env []string, args ...string) (int, error) {
	portFile := filepath.Join(tmp, name+".port")
	logPath := filepath.Join(tmp, name+".log")
	log, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	cmd := exec.Command(bin, append(args, "--port_file="+portFile)...)
	cmd.Env = append(environWithoutProxies(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	children = append(children, cmd)
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			deadline = time.Now()
			continue
		default:
		}
		if text, err := os.ReadFile(portFile); err == nil && strings.TrimSpace(string(text)) != "" {
			return strconv.Atoi(strings.TrimSpace(string(text)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	logText, _ := os.ReadFile(logPath)
	return 0, fmt.Errorf("%s did not start; its log:\n%s", name, logText)
}

// environWithoutProxies is this process's environment without proxy settings, so the servers'
// upstream requests stay on loopback.
func environWithoutProxies() []string {
	var env []string
	for _, kv := range os.Environ() {
		name := strings.ToLower(strings.SplitN(kv, "=", 2)[0])
		if name != "http_proxy" && name != "https_proxy" && name != "all_proxy" {
			env = append(env, kv)
		}
	}
	return env
}

func cleanup() {
	for _, cmd := range children {
		cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, cmd := range children {
		done := make(chan struct{})
		go func(p *os.Process) {
			for p.Signal(syscall.Signal(0)) == nil {
				time.Sleep(20 * time.Millisecond)
			}
			close(done)
		}(cmd.Process)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	}
	if tmp != "" {
		os.RemoveAll(tmp)
	}
}

// simRequests is the number of requests the fast simulator has received (GET /_sim/stats).
func simRequests(t *testing.T) int {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/_sim/stats", simPort))
	if err != nil {
		t.Fatalf("simulator stats: %v", err)
	}
	defer resp.Body.Close()
	var stats struct {
		Requests *int `json:"requests"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil || stats.Requests == nil {
		t.Fatalf("simulator stats: %v (requests present: %v)", err, stats.Requests != nil)
	}
	return *stats.Requests
}

// rpcCounter counts the RPCs a client makes, by method name.
type rpcCounter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *rpcCounter) intercept(ctx context.Context, method string, req, reply interface{},
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c.mu.Lock()
	c.calls[method[strings.LastIndex(method, "/")+1:]]++
	c.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (c *rpcCounter) count(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[method]
}

func newClient(t *testing.T, port int, opts ...verdict.Option) *verdict.Client {
	t.Helper()
	opts = append([]verdict.Option{verdict.WithDialOptions(grpc.WithNoProxy())}, opts...)
	c, err := verdict.New(fmt.Sprintf("127.0.0.1:%d", port), opts...)
	if err != nil {
		t.Fatalf("verdict.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(pki, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, want)
	}
}

func TestMissThenHitThenHistoryAndUsage(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, openPort, verdict.WithCaller("go-test"))
	before := simRequests(t)

	first, err := c.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: "8.8.8.8", UserAgent: "Mozilla/5.0"})
	if err != nil {
		t.Fatalf("first CheckIp: %v", err)
	}
	if first.GetSource() != verdictv1.Source_SOURCE_UPSTREAM || !first.GetClickSpent() {
		t.Fatalf("first CheckIp: source %v click_spent %v, want SOURCE_UPSTREAM and a click",
			first.GetSource(), first.GetClickSpent())
	}
	v := first.GetVerdict()
	if v.GetIp() != "8.8.8.8" || v.GetCaller() != "go-test" || v.GetUserAgent() != "Mozilla/5.0" ||
		v.GetScore() == verdictv1.Score_SCORE_UNSPECIFIED || v.GetCheckedAt() == nil {
		t.Fatalf("first verdict: %v", v)
	}

	second, err := c.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: "8.8.8.8"})
	if err != nil {
		t.Fatalf("second CheckIp: %v", err)
	}
	if second.GetSource() != verdictv1.Source_SOURCE_CACHE || second.GetClickSpent() {
		t.Fatalf("second CheckIp: source %v click_spent %v, want SOURCE_CACHE and no click",
			second.GetSource(), second.GetClickSpent())
	}
	if !proto.Equal(second.GetVerdict(), v) {
		t.Fatalf("the hit is not the stored verdict:\n%v\n%v", second.GetVerdict(), v)
	}
	if n := simRequests(t) - before; n != 1 {
		t.Fatalf("the simulator saw %d requests for a miss and a hit, want 1", n)
	}

	// max_age 0 always asks ClickPatrol: a second verdict for the IP, so history has two pages.
	third, err := c.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: "8.8.8.8", UserAgent: "curl/8",
		MaxAge: durationpb.New(0)})
	if err != nil {
		t.Fatalf("CheckIp with max_age 0: %v", err)
	}
	if third.GetSource() != verdictv1.Source_SOURCE_UPSTREAM || !third.GetClickSpent() {
		t.Fatalf("CheckIp with max_age 0: source %v click_spent %v", third.GetSource(), third.GetClickSpent())
	}
	if n := simRequests(t) - before; n != 2 {
		t.Fatalf("the simulator saw %d requests, want 2", n)
	}

	counter := &rpcCounter{calls: map[string]int{}}
	h := newClient(t, openPort, verdict.WithCaller("go-test"),
		verdict.WithDialOptions(grpc.WithUnaryInterceptor(counter.intercept)))
	req := &verdictv1.ListVerdictHistoryRequest{Ip: "8.8.8.8", PageSize: 1}
	history, err := h.ListVerdictHistory(ctx, req)
	if err != nil {
		t.Fatalf("ListVerdictHistory: %v", err)
	}
	if len(history) != 2 {
		t.Fatalf("ListVerdictHistory: %d verdicts, want 2: %v", len(history), history)
	}
	if !proto.Equal(history[0], third.GetVerdict()) || !proto.Equal(history[1], v) {
		t.Fatalf("history is not the two verdicts, newest first:\n%v\nwant\n%v\n%v", history,
			third.GetVerdict(), v)
	}
	if pages := counter.count("ListVerdictHistory"); pages < 2 {
		t.Fatalf("ListVerdictHistory made %d calls for 2 verdicts of page size 1", pages)
	}
	if req.GetPageToken() != "" {
		t.Fatalf("ListVerdictHistory modified its request: %v", req)
	}

	usage, err := c.GetUsage(ctx, &verdictv1.GetUsageRequest{Caller: "go-test"})
	if err != nil {
		t.Fatalf("GetUsage: %v", err)
	}
	if len(usage.GetCallers()) != 1 {
		t.Fatalf("GetUsage: %v", usage)
	}
	u := usage.GetCallers()[0]
	if u.GetCaller() != "go-test" || u.GetClicks() != 2 || u.GetCacheHits() != 1 || u.GetRequests() != 3 {
		t.Fatalf("usage of go-test: %v, want 2 clicks, 1 cache hit, 3 requests", u)
	}
}

func TestBatchSplitInOrderWithBadItems(t *testing.T) {
	ctx := context.Background()
	counter := &rpcCounter{calls: map[string]int{}}
	c := newClient(t, openPort, verdict.WithCaller("go-batch"),
		verdict.WithDialOptions(grpc.WithUnaryInterceptor(counter.intercept)))
	ips := []string{"1.1.1.1", "not-an-ip", "9.9.9.9", "::ffff:1.0.0.1", "10.0.0.1"}
	items := make([]*verdictv1.CheckIpRequest, len(ips))
	for i, ip := range ips {
		items[i] = &verdictv1.CheckIpRequest{Ip: ip}
	}
	results, err := c.CheckBatch(ctx, items)
	if err != nil {
		t.Fatalf("CheckBatch: %v", err)
	}
	if len(results) != len(ips) {
		t.Fatalf("CheckBatch: %d results for %d items", len(results), len(ips))
	}
	for _, i := range []int{0, 2, 3} {
		want := map[int]string{0: "1.1.1.1", 2: "9.9.9.9", 3: "1.0.0.1"}[i]
		if results[i].Err != nil || results[i].Response.GetVerdict().GetIp() != want {
			t.Fatalf("result %d: %v %v, want a verdict for %s", i, results[i].Response, results[i].Err, want)
		}
	}
	wantCode(t, "not-an-ip", results[1].Err, codes.InvalidArgument)
	if results[1].Response != nil || !strings.Contains(status.Convert(results[1].Err).Message(), "not-an-ip") {
		t.Fatalf("result 1: %v %v, want the server's message naming the item", results[1].Response, results[1].Err)
	}
	wantCode(t, "10.0.0.1 (a private address)", results[4].Err, codes.FailedPrecondition)
	if got := counter.count("CheckBatch"); got != 3 {
		t.Fatalf("5 items at max_batch 2 took %d CheckBatch calls, want 3", got)
	}

	// max_batch is asked once.
	if _, err := c.CheckBatch(ctx, items[:3]); err != nil {
		t.Fatalf("second CheckBatch: %v", err)
	}
	if got, calls := counter.count("GetServerInfo"), counter.count("CheckBatch"); got != 1 || calls != 5 {
		t.Fatalf("after two batches: %d GetServerInfo and %d CheckBatch calls, want 1 and 5", got, calls)
	}
}

func TestInvalidIpIsInvalidArgument(t *testing.T) {
	c := newClient(t, openPort, verdict.WithCaller("go-test-invalid"))
	_, err := c.CheckIp(context.Background(), &verdictv1.CheckIpRequest{Ip: "999.1.1.1"})
	wantCode(t, "CheckIp(999.1.1.1)", err, codes.InvalidArgument)
	if !strings.Contains(status.Convert(err).Message(), "999.1.1.1") {
		t.Fatalf("message %q does not name the IP", status.Convert(err).Message())
	}
}

func TestKeyedModeOverTLS(t *testing.T) {
	ctx := context.Background()
	ca := readFile(t, "ca.pem")
	good := newClient(t, keyedPort, verdict.WithAPIKey(goodKey), verdict.WithRootCAs(ca))
	info, err := good.GetServerInfo(ctx)
	if err != nil {
		t.Fatalf("GetServerInfo with the right key: %v", err)
	}
	if !info.GetKeyed() || info.GetCaller() != "go-team" {
		t.Fatalf("GetServerInfo: %v, want keyed and caller go-team", info)
	}
	resp, err := good.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: "8.8.4.4"})
	if err != nil {
		t.Fatalf("CheckIp with the right key: %v", err)
	}
	if !resp.GetClickSpent() || resp.GetVerdict().GetCaller() != "go-team" {
		t.Fatalf("CheckIp with the right key: %v", resp)
	}
	usage, err := good.GetUsage(ctx, &verdictv1.GetUsageRequest{Caller: "go-team"})
	if err != nil {
		t.Fatalf("GetUsage: %v", err)
	}
	if len(usage.GetCallers()) != 1 || usage.GetCallers()[0].GetCaller() != "go-team" ||
		usage.GetCallers()[0].GetClicks() != 1 {
		t.Fatalf("usage of go-team: %v, want its 1 click", usage)
	}

	wrong := newClient(t, keyedPort, verdict.WithAPIKey(otherKey), verdict.WithRootCAs(ca))
	_, err = wrong.GetServerInfo(ctx)
	wantCode(t, "GetServerInfo with a wrong key", err, codes.Unauthenticated)
	_, err = wrong.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: "8.8.4.4"})
	wantCode(t, "CheckIp with a wrong key", err, codes.Unauthenticated)
	none := newClient(t, keyedPort, verdict.WithCaller("go-team"), verdict.WithRootCAs(ca))
	_, err = none.GetServerInfo(ctx)
	wantCode(t, "GetServerInfo with no key (x-caller only)", err, codes.Unauthenticated)

	// The server name override: the certificate names localhost, not another host.
	named := newClient(t, keyedPort, verdict.WithAPIKey(goodKey), verdict.WithRootCAs(ca),
		verdict.WithServerName("localhost"))
	if _, err := named.GetServerInfo(ctx); err != nil {
		t.Fatalf("GetServerInfo with server name localhost: %v", err)
	}
	misnamed := newClient(t, keyedPort, verdict.WithAPIKey(goodKey), verdict.WithRootCAs(ca),
		verdict.WithServerName("verdictd.example"), verdict.WithTimeout(3*time.Second))
	_, err = misnamed.GetServerInfo(ctx)
	wantCode(t, "GetServerInfo with server name verdictd.example", err, codes.Unavailable)

	// Plaintext to a TLS port fails.
	plain := newClient(t, keyedPort, verdict.WithAPIKey(goodKey), verdict.WithTimeout(3*time.Second))
	if _, err := plain.GetServerInfo(ctx); status.Code(err) != codes.Unavailable &&
		status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("plaintext to a TLS port: %v", err)
	}
}

func TestMutualTLS(t *testing.T) {
	ctx := context.Background()
	ca := readFile(t, "ca.pem")
	withCert := newClient(t, mtlsPort, verdict.WithCaller("go-mtls"), verdict.WithRootCAs(ca),
		verdict.WithClientCert(readFile(t, "client.pem"), readFile(t, "client.key")))
	info, err := withCert.GetServerInfo(ctx)
	if err != nil {
		t.Fatalf("GetServerInfo with the client certificate: %v", err)
	}
	if info.GetCaller() != "go-mtls" || info.GetKeyed() {
		t.Fatalf("GetServerInfo: %v", info)
	}
	without := newClient(t, mtlsPort, verdict.WithCaller("go-mtls"), verdict.WithRootCAs(ca),
		verdict.WithTimeout(3*time.Second))
	_, err = without.GetServerInfo(ctx)
	wantCode(t, "GetServerInfo without a client certificate", err, codes.Unavailable)
	// A certificate of that CA that is not a client's (the server's: serverAuth only) is refused.
	foreign := newClient(t, mtlsPort, verdict.WithCaller("go-mtls"), verdict.WithRootCAs(ca),
		verdict.WithClientCert(readFile(t, "server.pem"), readFile(t, "server.key")),
		verdict.WithTimeout(3*time.Second))
	_, err = foreign.GetServerInfo(ctx)
	wantCode(t, "GetServerInfo with a server certificate as client certificate", err, codes.Unavailable)
}

func TestDeadlines(t *testing.T) {
	// The client's default deadline, against a ClickPatrol that takes 3 s; a context deadline
	// later than it does not extend it.
	c := newClient(t, slowPort, verdict.WithCaller("go-slow"), verdict.WithTimeout(500*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	started := time.Now()
	_, err := c.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: "8.8.4.4"})
	elapsed := time.Since(started)
	wantCode(t, "CheckIp against a slow upstream", err, codes.DeadlineExceeded)
	if elapsed > 2*time.Second {
		t.Fatalf("CheckIp gave up after %v, not at its 500 ms deadline", elapsed)
	}

	// A context deadline earlier than the client's default wins.
	d := newClient(t, slowPort, verdict.WithCaller("go-slow"))
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	started = time.Now()
	_, err = d.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: "9.9.9.9"})
	elapsed = time.Since(started)
	wantCode(t, "CheckIp with a 300 ms context", err, codes.DeadlineExceeded)
	if elapsed > 2*time.Second {
		t.Fatalf("CheckIp gave up after %v, not at its context's 300 ms deadline", elapsed)
	}

	// A batch whose CheckBatch call times out returns its status, and no results for its items.
	items := []*verdictv1.CheckIpRequest{{Ip: "1.1.1.1"}, {Ip: "1.0.0.1"}}
	started = time.Now()
	results, err := c.CheckBatch(context.Background(), items)
	wantCode(t, "CheckBatch against a slow upstream", err, codes.DeadlineExceeded)
	if len(results) != 0 || time.Since(started) > 2*time.Second {
		t.Fatalf("CheckBatch: %d results after %v", len(results), time.Since(started))
	}
}
