// Command verdict-check asks verdictd for the verdicts of the IP addresses on its command line,
// with the Go client (package verdictd/client/go):
//
//	VERDICT_API_KEY=... verdict-check -server=127.0.0.1:50051 -ca=ca.pem 8.8.8.8 1.1.1.1
//
// The API key comes only from $VERDICT_API_KEY (a flag would show in ps); without it, -caller
// names the caller in open mode. One IP is a CheckIp call, several are one CheckBatch (split
// at the server's max_batch). Each result is a line: IP, score, source, whether this call spent
// a click. Exit status: 0; the gRPC code of a failed call; 65 when some items of a batch failed;
// 64 for a usage error; 66 for an unreadable file.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc/status"

	verdict "verdictd/client/go"
	"verdictd/client/go/verdictv1"
)

func main() {
	server := flag.String("server", "127.0.0.1:50051", "verdictd's address")
	caFile := flag.String("ca", "", "PEM CA certificates: TLS (else plaintext)")
	certFile := flag.String("cert", "", "PEM client certificate (mutual TLS; with -key)")
	keyFile := flag.String("key", "", "PEM client key (mutual TLS; with -cert)")
	serverName := flag.String("server_name", "", "name the server's certificate must carry")
	caller := flag.String("caller", "", "x-caller in open mode (ignored with $VERDICT_API_KEY)")
	userAgent := flag.String("ua", "", "user agent sent with each IP")
	timeout := flag.Duration("timeout", verdict.DefaultTimeout, "deadline of each call")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] IP...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(64)
	}

	opts := []verdict.Option{verdict.WithTimeout(*timeout)}
	if key := os.Getenv("VERDICT_API_KEY"); key != "" {
		opts = append(opts, verdict.WithAPIKey(key))
	} else if *caller != "" {
		opts = append(opts, verdict.WithCaller(*caller))
	}
	if *caFile != "" {
		opts = append(opts, verdict.WithRootCAs(mustRead(*caFile)))
	}
	if *certFile != "" || *keyFile != "" {
		opts = append(opts, verdict.WithClientCert(mustRead(*certFile), mustRead(*keyFile)))
	}
	if *serverName != "" {
		opts = append(opts, verdict.WithServerName(*serverName))
	}
	client, err := verdict.New(*server, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "verdict-check:", err)
		os.Exit(64)
	}
	defer client.Close()
	os.Exit(run(client, flag.Args(), *userAgent))
}

func run(client *verdict.Client, ips []string, userAgent string) int {
	ctx := context.Background()
	if len(ips) == 1 {
		resp, err := client.CheckIp(ctx, &verdictv1.CheckIpRequest{Ip: ips[0], UserAgent: userAgent})
		if err != nil {
			return fail(ips[0], err)
		}
		show(resp)
		return 0
	}
	items := make([]*verdictv1.CheckIpRequest, len(ips))
	for i, ip := range ips {
		items[i] = &verdictv1.CheckIpRequest{Ip: ip, UserAgent: userAgent}
	}
	results, err := client.CheckBatch(ctx, items)
	exit := 0
	for i, r := range results {
		if r.Err != nil {
			fail(ips[i], r.Err)
			exit = 65
			continue
		}
		show(r.Response)
	}
	if err != nil {
		return fail("CheckBatch", err)
	}
	return exit
}

func show(r *verdictv1.CheckIpResponse) {
	v := r.GetVerdict()
	fmt.Printf("%s\t%s\t%s\tclick_spent=%v\tchecked_at=%s\n", v.GetIp(), v.GetScore(), r.GetSource(),
		r.GetClickSpent(), v.GetCheckedAt().AsTime().Format(time.RFC3339))
}

// fail prints err as "what: CODE: message" and returns its gRPC code as the exit status.
func fail(what string, err error) int {
	st := status.Convert(err)
	fmt.Fprintf(os.Stderr, "verdict-check: %s: %s: %s\n", what, st.Code(), st.Message())
	return int(st.Code())
}

func mustRead(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "verdict-check:", err)
		os.Exit(66)
	}
	return data
}
