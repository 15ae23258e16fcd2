package verdictd.client;

import io.grpc.Channel;
import io.grpc.ClientInterceptors;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import io.netty.handler.ssl.OpenSsl;
import io.netty.handler.ssl.SslContextBuilder;
import java.io.File;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLException;
import verdict.v1.CheckBatchRequest;
import verdict.v1.CheckBatchResponse;
import verdict.v1.CheckBatchResult;
import verdict.v1.CheckIpRequest;
import verdict.v1.CheckIpResponse;
import verdict.v1.GetServerInfoRequest;
import verdict.v1.GetServerInfoResponse;
import verdict.v1.GetUsageRequest;
import verdict.v1.GetUsageResponse;
import verdict.v1.ListVerdictHistoryRequest;
import verdict.v1.ListVerdictHistoryResponse;
import verdict.v1.Verdict;
import verdict.v1.VerdictServiceGrpc;

/**
 * A small client of verdictd's {@code verdict.v1.VerdictService}, on grpc-java (Netty transport)
 * and the message classes protoc generates from {@code proto/verdict/v1/verdict.proto} into the
 * package {@code verdict.v1}.
 *
 * <pre>{@code
 * try (VerdictClient client = VerdictClient.newBuilder("127.0.0.1:50051")
 *     .apiKey(System.getenv("VERDICT_API_KEY"))   // or .caller("checkout") in open mode
 *     .trustedCertificates(new File("ca.pem"))     // omit for plaintext
 *     .build()) {
 *   CheckIpResponse r = client.checkIp("8.8.8.8");
 *   System.out.println(r.getVerdict().getScore() + " " + r.getSource() + " " + r.getClickSpent());
 * }
 * }</pre>
 *
 * <p>Every call has a deadline (the builder's, 10 s unless set). A failed call throws grpc-java's
 * {@link StatusRuntimeException}: {@code e.getStatus().getCode()} and
 * {@code e.getStatus().getDescription()} (the server's message).
 *
 * <p><b>Nothing is retried</b>, by this class or by the channel (retries are disabled on it): a
 * {@code checkIp} or {@code checkBatch} that failed, even with {@code DEADLINE_EXCEEDED} or
 * {@code UNAVAILABLE}, may still have spent a click (the request may have reached ClickPatrol,
 * which bills every request), and a retry could spend another. Whether to try again is the
 * caller's decision.
 *
 * <p>Instances are thread-safe; make one per server and share it. {@link #close()} shuts the
 * channel down.
 */
public final class VerdictClient implements AutoCloseable {
  /** The deadline of every call unless {@link Builder#deadline} says otherwise. */
  public static final Duration DEFAULT_DEADLINE = Duration.ofSeconds(10);

  /** A batch size used if the server reports none (max_batch 0); the server's own default. */
  private static final int FALLBACK_MAX_BATCH = 1000;

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> CALLER =
      Metadata.Key.of("x-caller", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  private final VerdictServiceGrpc.VerdictServiceBlockingStub stub;
  private final Duration deadline;
  private volatile int maxBatch;  // 0: not asked yet

  private VerdictClient(ManagedChannel channel, Metadata headers, Duration deadline) {
    this.channel = channel;
    Channel intercepted =
        ClientInterceptors.intercept(channel, MetadataUtils.newAttachHeadersInterceptor(headers));
    this.stub = VerdictServiceGrpc.newBlockingStub(intercepted);
    this.deadline = deadline;
  }

  /** A builder for a client of the verdictd at {@code address} ("host:port"). */
  public static Builder newBuilder(String address) {
    return new Builder(address);
  }

  private VerdictServiceGrpc.VerdictServiceBlockingStub stub() {
    return stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** Checks one IP with the server's default freshness. */
  public CheckIpResponse checkIp(String ip) {
    return checkIp(CheckIpRequest.newBuilder().setIp(ip).build());
  }

  /** Checks one IP (user agent, max_age, cache_only as the request says). */
  public CheckIpResponse checkIp(CheckIpRequest request) {
    return stub().checkIp(request);
  }

  /** The server's limits and mode, and who it thinks is asking. */
  public GetServerInfoResponse getServerInfo() {
    return stub().getServerInfo(GetServerInfoRequest.getDefaultInstance());
  }

  /** {@link #checkBatch(List)} for bare IPs. */
  public List<CheckBatchResult> checkBatchIps(Collection<String> ips) {
    List<CheckIpRequest> items = new ArrayList<>(ips.size());
    for (String ip : ips) {
      items.add(CheckIpRequest.newBuilder().setIp(ip).build());
    }
    return checkBatch(items);
  }

  /**
   * Checks many IPs: split into CheckBatch calls of at most the server's max_batch (asked once,
   * with GetServerInfo, on the first batch), sent one after another, each with its own deadline.
   * The results are in input order; each has either {@code getResult()} or, for an item that
   * failed alone, {@code getError()} with a {@code google.rpc.Code} value
   * ({@code Status.fromCodeValue(error.getCode())}) and the server's message. A failed call throws
   * and loses the results of the calls before it (whose clicks are spent).
   */
  public List<CheckBatchResult> checkBatch(List<CheckIpRequest> items) {
    List<CheckBatchResult> results = new ArrayList<>(items.size());
    if (items.isEmpty()) {
      return results;
    }
    int size = maxBatch();
    for (int start = 0; start < items.size(); start += size) {
      List<CheckIpRequest> chunk = items.subList(start, Math.min(items.size(), start + size));
      CheckBatchResponse response =
          stub().checkBatch(CheckBatchRequest.newBuilder().addAllItems(chunk).build());
      if (response.getResultsCount() != chunk.size()) {
        throw Status.INTERNAL
            .withDescription("CheckBatch answered " + response.getResultsCount() + " results for "
                + chunk.size() + " items")
            .asRuntimeException();
      }
      results.addAll(response.getResultsList());
    }
    return results;
  }

  private int maxBatch() {
    int size = maxBatch;
    if (size == 0) {
      int reported = getServerInfo().getMaxBatch();
      size = reported > 0 ? reported : FALLBACK_MAX_BATCH;
      maxBatch = size;
    }
    return size;
  }

  /** Every stored verdict for {@code ip}, newest first, across all pages. */
  public List<Verdict> listVerdictHistory(String ip) {
    return listVerdictHistory(ListVerdictHistoryRequest.newBuilder().setIp(ip).build());
  }

  /**
   * Every stored verdict the request selects (ip, since, until; page_size per page), newest
   * first, following the page tokens from the request's own (usually none) to the last page.
   * Each page is a call with its own deadline.
   */
  public List<Verdict> listVerdictHistory(ListVerdictHistoryRequest request) {
    List<Verdict> verdicts = new ArrayList<>();
    ListVerdictHistoryRequest page = request;
    while (true) {
      ListVerdictHistoryResponse response = stub().listVerdictHistory(page);
      verdicts.addAll(response.getVerdictsList());
      String next = response.getNextPageToken();
      if (next.isEmpty()) {
        return verdicts;
      }
      page = page.toBuilder().setPageToken(next).build();
    }
  }

  /** Usage of {@code caller} ("" = every caller this client may read) this month. */
  public GetUsageResponse getUsage(String caller) {
    return getUsage(GetUsageRequest.newBuilder().setCaller(caller).build());
  }

  /** Usage as the request selects (caller, since, until). */
  public GetUsageResponse getUsage(GetUsageRequest request) {
    return stub().getUsage(request);
  }

  /** Shuts the channel down, waiting up to 5 s for calls in flight, then cancelling them. */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** Options of a {@link VerdictClient}; {@link #build()} makes it. */
  public static final class Builder {
    private final String address;
    private File trustedCertificates;
    private File clientCertificateChain;
    private File clientPrivateKey;
    private String serverName;
    private String apiKey;
    private String caller;
    private Duration deadline = DEFAULT_DEADLINE;

    private Builder(String address) {
      this.address = Objects.requireNonNull(address, "address");
    }

    /** TLS, trusting the CA certificates of this PEM file (without it: plaintext). */
    public Builder trustedCertificates(File caPem) {
      this.trustedCertificates = caPem;
      return this;
    }

    /**
     * A client certificate for mutual TLS: its PEM chain and its PEM private key (PKCS#8
     * "PRIVATE KEY", as {@code openssl req -newkey} writes it). Needs
     * {@link #trustedCertificates}.
     */
    public Builder clientCertificate(File certChainPem, File privateKeyPem) {
      this.clientCertificateChain = certChainPem;
      this.clientPrivateKey = privateKeyPem;
      return this;
    }

    /** The name the server's certificate must carry (default: the host of the address). */
    public Builder serverName(String name) {
      this.serverName = name;
      return this;
    }

    /**
     * Keyed mode: sent as {@code authorization: Bearer <key>} on every call. Null or empty: none.
     * Read it from the environment or a secret store, never from a command line.
     */
    public Builder apiKey(String key) {
      this.apiKey = key;
      return this;
    }

    /** Open mode: sent as {@code x-caller} (ignored by a keyed server). Null or empty: none. */
    public Builder caller(String name) {
      this.caller = name;
      return this;
    }

    /** The deadline of every call (each CheckBatch chunk and history page is one call). */
    public Builder deadline(Duration value) {
      if (value.isNegative() || value.isZero()) {
        throw new IllegalArgumentException("deadline must be positive: " + value);
      }
      this.deadline = value;
      return this;
    }

    /**
     * Makes the client; the connection is made lazily, on the first call.
     *
     * @throws SSLException if the certificate or key files cannot be read or parsed
     * @throws IllegalStateException for TLS without netty-tcnative (see the README: Debian's
     *     libnetty-tcnative.so must be reachable as libnetty_tcnative.so on java.library.path)
     */
    public VerdictClient build() throws SSLException {
      NettyChannelBuilder channel = NettyChannelBuilder.forTarget(address).disableRetry();
      if (trustedCertificates != null) {
        if (!OpenSsl.isAvailable()) {
          // Without it netty falls back to the JDK provider, which this netty cannot use for
          // ALPN, and fails with a message that does not say why.
          throw new IllegalStateException("TLS needs netty-tcnative (OpenSSL), which did not"
              + " load: " + OpenSsl.unavailabilityCause() + ". On Debian, copy"
              + " /usr/lib/x86_64-linux-gnu/jni/libnetty-tcnative.so to DIR/libnetty_tcnative.so"
              + " and run java with -Djava.library.path=DIR");
        }
        SslContextBuilder ssl = GrpcSslContexts.forClient().trustManager(trustedCertificates);
        if (clientCertificateChain != null) {
          ssl.keyManager(clientCertificateChain, clientPrivateKey);
        }
        channel.sslContext(ssl.build());
      } else if (clientCertificateChain != null) {
        throw new IllegalStateException("a client certificate needs trustedCertificates (TLS)");
      } else {
        channel.usePlaintext();
      }
      if (serverName != null && !serverName.isEmpty()) {
        channel.overrideAuthority(serverName);
      }
      Metadata headers = new Metadata();
      if (apiKey != null && !apiKey.isEmpty()) {
        headers.put(AUTHORIZATION, "Bearer " + apiKey);
      } else if (caller != null && !caller.isEmpty()) {
        headers.put(CALLER, caller);
      }
      return new VerdictClient(channel.build(), headers, deadline);
    }
  }
}
