package verdictd.client;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonParser;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.AfterClass;
import org.junit.BeforeClass;
import org.junit.Test;
import verdict.v1.CheckBatchResult;
import verdict.v1.CheckIpRequest;
import verdict.v1.CheckIpResponse;
import verdict.v1.GetServerInfoResponse;
import verdict.v1.GetUsageResponse;
import verdict.v1.ListVerdictHistoryRequest;
import verdict.v1.Score;
import verdict.v1.Source;
import verdict.v1.Verdict;

/**
 * End-to-end test of client/java (VerdictClient) against the real verdictd and the simulated
 * ClickPatrol, each started on 127.0.0.1 port 0 (--port_file) in a temp dir. Run by ctest
 * (java_client) with VERDICTD_BIN and SIM_BIN set and -Dverdictd.source_dir=the repository.
 */
public class VerdictClientTest {
  private static final Path ROOT = Path.of(System.getProperty("verdictd.source_dir", "."));
  private static final String VERDICTD_BIN = envOr("VERDICTD_BIN", "build/verdictd");
  private static final String SIM_BIN = envOr("SIM_BIN", "build/clickpatrol_sim");
  private static final String TOKEN = "java-client-test-token";
  private static final String GOOD_KEY = "vk_java_good_7d41c9e0b2a65f38";
  private static final String OTHER_KEY = "vk_java_other_3e8a0f6c91d2b475";

  private static final List<Process> children = Collections.synchronizedList(new ArrayList<>());
  private static Path tmp;
  private static Path pki;
  private static Path otherPki;
  private static int simPort;
  private static int openPort;    // open mode, plaintext, --max_batch=2
  private static int keyedPort;   // keyed mode over TLS
  private static int mtlsPort;    // open mode, mutual TLS (--tls_client_ca)
  private static int slowPort;    // open mode, plaintext, in front of a --latency=3s simulator

  private static String envOr(String name, String fallback) {
    String value = System.getenv(name);
    return value != null && !value.isEmpty() ? value : ROOT.resolve(fallback).toString();
  }

  /** Starts {@code command} (plus --port_file); returns the port it wrote there. */
  private static int start(String name, List<String> command) throws Exception {
    Path portFile = tmp.resolve(name + ".port");
    Path log = tmp.resolve(name + ".log");
    List<String> args = new ArrayList<>(command);
    args.add("--port_file=" + portFile);
    ProcessBuilder builder = new ProcessBuilder(args).redirectErrorStream(true)
        .redirectOutput(log.toFile());
    builder.environment().put("CLICKPATROL_TOKEN", TOKEN);
    Process child = builder.start();
    children.add(child);
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
    while (System.nanoTime() < deadline && child.isAlive()) {
      if (Files.exists(portFile)) {
        String text = Files.readString(portFile).trim();
        if (!text.isEmpty()) {
          return Integer.parseInt(text);
        }
      }
      Thread.sleep(20);
    }
    throw new IllegalStateException(name + " did not start; its log:\n" + Files.readString(log));
  }

  private static List<String> sim(String... extra) {
    List<String> args =
        new ArrayList<>(List.of(SIM_BIN, "--listen=127.0.0.1:0", "--token=" + TOKEN));
    args.addAll(List.of(extra));
    return args;
  }

  private static List<String> verdictd(String name, int sim, String... extra) {
    List<String> args = new ArrayList<>(List.of(VERDICTD_BIN, "--listen=127.0.0.1:0",
        "--db=" + tmp.resolve(name + ".db"), "--upstream_url=http://127.0.0.1:" + sim + "/"));
    args.addAll(List.of(extra));
    return args;
  }

  private static void makePki(Path dir) throws Exception {
    Process p = new ProcessBuilder(ROOT.resolve("tests/clients/make_test_pki.sh").toString(),
        dir.toString()).inheritIO().start();
    assertEquals("make_test_pki.sh", 0, p.waitFor());
  }

  @BeforeClass
  public static void startServers() throws Exception {
    // @AfterClass stops them however the tests end; the hook covers the JVM itself being told
    // to stop (SIGTERM, ^C) on the way.
    Runtime.getRuntime().addShutdownHook(
        new Thread(() -> children.forEach(Process::destroyForcibly)));
    tmp = Files.createTempDirectory("verdict_java_test_");
    pki = tmp.resolve("pki");
    otherPki = tmp.resolve("other_pki");
    makePki(pki);
    makePki(otherPki);
    Path keys = tmp.resolve("api_keys");
    Files.writeString(keys, "java-team " + sha256Hex(GOOD_KEY) + "\n");
    Files.setPosixFilePermissions(keys, PosixFilePermissions.fromString("rw-------"));

    simPort = start("sim", sim());
    int slowSimPort = start("slow_sim", sim("--latency=3s"));
    openPort = start("open", verdictd("open", simPort, "--max_batch=2"));
    String cert = "--tls_cert=" + pki.resolve("server.pem");
    String key = "--tls_key=" + pki.resolve("server.key");
    keyedPort = start("keyed", verdictd("keyed", simPort, "--api_keys_file=" + keys, cert, key));
    mtlsPort = start("mtls",
        verdictd("mtls", simPort, cert, key, "--tls_client_ca=" + pki.resolve("ca.pem")));
    slowPort = start("slow", verdictd("slow", slowSimPort));
  }

  @AfterClass
  public static void stopServers() throws Exception {
    for (Process child : children) {
      child.destroy();
    }
    for (Process child : children) {
      if (!child.waitFor(5, TimeUnit.SECONDS)) {
        child.destroyForcibly().waitFor();
      }
    }
    if (tmp != null) {
      try (Stream<Path> paths = Files.walk(tmp)) {
        paths.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
      }
    }
  }

  private static String sha256Hex(String text) throws Exception {
    return HexFormat.of().formatHex(
        MessageDigest.getInstance("SHA-256").digest(text.getBytes(StandardCharsets.UTF_8)));
  }

  /** The simulator's count of requests to "/", the clicks ClickPatrol would bill. */
  private static long simRequests() throws IOException {
    HttpURLConnection c = (HttpURLConnection)
        new URL("http://127.0.0.1:" + simPort + "/_sim/stats").openConnection();
    try (InputStream in = c.getInputStream()) {
      String body = new String(in.readAllBytes(), StandardCharsets.UTF_8);
      return JsonParser.parseString(body).getAsJsonObject().get("requests").getAsLong();
    } finally {
      c.disconnect();
    }
  }

  private static VerdictClient.Builder client(int port) {
    return VerdictClient.newBuilder("127.0.0.1:" + port);
  }

  private static File pem(Path dir, String name) {
    return dir.resolve(name).toFile();
  }

  private static Status.Code codeOf(Runnable call) {
    return assertThrows(StatusRuntimeException.class, call::run).getStatus().getCode();
  }

  @Test
  public void missThenHitThenHistoryAndUsage() throws Exception {
    try (VerdictClient c = client(openPort).caller("java-test").build()) {
      long before = simRequests();
      CheckIpResponse first = c.checkIp(
          CheckIpRequest.newBuilder().setIp("8.8.8.8").setUserAgent("Mozilla/5.0").build());
      assertEquals(Source.SOURCE_UPSTREAM, first.getSource());
      assertTrue(first.getClickSpent());
      assertEquals("8.8.8.8", first.getVerdict().getIp());
      assertEquals("java-test", first.getVerdict().getCaller());
      assertEquals("Mozilla/5.0", first.getVerdict().getUserAgent());
      assertNotEquals(Score.SCORE_UNSPECIFIED, first.getVerdict().getScore());

      CheckIpResponse second = c.checkIp("8.8.8.8");
      assertEquals(Source.SOURCE_CACHE, second.getSource());
      assertFalse(second.getClickSpent());
      assertEquals(first.getVerdict().getScore(), second.getVerdict().getScore());
      assertEquals(first.getVerdict().getCheckedAt(), second.getVerdict().getCheckedAt());
      assertEquals("one click for a miss and a hit", 1, simRequests() - before);

      // max_age 0 always asks ClickPatrol: a second verdict in the history.
      CheckIpResponse third = c.checkIp(CheckIpRequest.newBuilder().setIp("8.8.8.8")
          .setMaxAge(com.google.protobuf.Duration.getDefaultInstance()).build());
      assertEquals(Source.SOURCE_UPSTREAM, third.getSource());
      assertTrue(third.getClickSpent());
      assertEquals(2, simRequests() - before);

      // One verdict per page: the client follows the token to the second page.
      List<Verdict> history = c.listVerdictHistory(
          ListVerdictHistoryRequest.newBuilder().setIp("8.8.8.8").setPageSize(1).build());
      assertEquals(2, history.size());
      assertEquals(third.getVerdict().getCheckedAt(), history.get(0).getCheckedAt());
      assertEquals(first.getVerdict().getCheckedAt(), history.get(1).getCheckedAt());
      for (Verdict v : history) {
        assertEquals("8.8.8.8", v.getIp());
        assertEquals("java-test", v.getCaller());
      }

      GetUsageResponse usage = c.getUsage("java-test");
      assertEquals(1, usage.getCallersCount());
      assertEquals("java-test", usage.getCallers(0).getCaller());
      assertEquals(2, usage.getCallers(0).getClicks());
      assertEquals(1, usage.getCallers(0).getCacheHits());
      assertEquals(3, usage.getCallers(0).getRequests());
    }
  }

  @Test
  public void batchLargerThanMaxBatchIsSplitInOrderWithPerItemErrors() throws Exception {
    try (VerdictClient c = client(openPort).caller("java-batch").build()) {
      assertEquals(2, c.getServerInfo().getMaxBatch());
      // Five items against --max_batch=2: unsplit, the server would refuse the whole batch.
      List<String> ips = List.of("1.1.1.1", "not-an-ip", "9.9.9.9", "1.0.0.1", "10.0.0.1");
      long before = simRequests();
      List<CheckBatchResult> results = c.checkBatchIps(ips);
      assertEquals(ips.size(), results.size());
      assertEquals("1.1.1.1", results.get(0).getResult().getVerdict().getIp());
      assertTrue(results.get(1).hasError());
      assertEquals(Status.Code.INVALID_ARGUMENT.value(), results.get(1).getError().getCode());
      assertTrue(results.get(1).getError().getMessage(),
          results.get(1).getError().getMessage().contains("not-an-ip"));
      assertEquals("9.9.9.9", results.get(2).getResult().getVerdict().getIp());
      assertEquals("1.0.0.1", results.get(3).getResult().getVerdict().getIp());
      assertTrue("a private address", results.get(4).hasError());
      assertEquals(Status.Code.FAILED_PRECONDITION.value(), results.get(4).getError().getCode());
      for (int i : new int[] {0, 2, 3}) {
        assertEquals(Source.SOURCE_UPSTREAM, results.get(i).getResult().getSource());
        assertTrue(results.get(i).getResult().getClickSpent());
      }
      assertEquals("a click per good public IP", 3, simRequests() - before);
    }
  }

  @Test
  public void anInvalidIpIsInvalidArgumentWithTheServersMessage() throws Exception {
    try (VerdictClient c = client(openPort).caller("java-test").build()) {
      StatusRuntimeException e =
          assertThrows(StatusRuntimeException.class, () -> c.checkIp("999.1.1.1"));
      assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
      assertTrue(e.getStatus().getDescription(),
          e.getStatus().getDescription().contains("999.1.1.1"));
    }
  }

  @Test
  public void keyedModeOverTlsRightKeyAnsweredWrongKeyUnauthenticated() throws Exception {
    File ca = pem(pki, "ca.pem");
    try (VerdictClient good = client(keyedPort).apiKey(GOOD_KEY).trustedCertificates(ca).build();
        VerdictClient wrong = client(keyedPort).apiKey(OTHER_KEY).trustedCertificates(ca).build();
        VerdictClient none = client(keyedPort).caller("java-team").trustedCertificates(ca)
            .build()) {
      GetServerInfoResponse info = good.getServerInfo();
      assertTrue(info.getKeyed());
      assertEquals("java-team", info.getCaller());

      long before = simRequests();
      assertEquals(Status.Code.UNAUTHENTICATED, codeOf(wrong::getServerInfo));
      assertEquals(Status.Code.UNAUTHENTICATED, codeOf(() -> wrong.checkIp("8.8.4.4")));
      assertEquals("x-caller is no key", Status.Code.UNAUTHENTICATED,
          codeOf(() -> none.checkIp("8.8.4.4")));
      assertEquals("refused calls spend nothing", 0, simRequests() - before);

      CheckIpResponse r = good.checkIp("8.8.4.4");
      assertEquals(Source.SOURCE_UPSTREAM, r.getSource());
      assertTrue(r.getClickSpent());
      assertEquals("java-team", r.getVerdict().getCaller());
      assertEquals(1, simRequests() - before);

      GetUsageResponse usage = good.getUsage("java-team");
      assertEquals(1, usage.getCallersCount());
      assertEquals("java-team", usage.getCallers(0).getCaller());
      assertEquals(1, usage.getCallers(0).getClicks());
      assertEquals(1, usage.getCallers(0).getRequests());
      assertEquals("a caller reads only its own usage", Status.Code.PERMISSION_DENIED,
          codeOf(() -> good.getUsage("")));
    }
  }

  @Test
  public void tlsChecksTheServerCertificate() throws Exception {
    File ca = pem(pki, "ca.pem");
    // The certificate names 127.0.0.1 and localhost.
    try (VerdictClient named = client(keyedPort).apiKey(GOOD_KEY).trustedCertificates(ca)
            .serverName("localhost").build();
        VerdictClient misnamed = client(keyedPort).apiKey(GOOD_KEY).trustedCertificates(ca)
            .serverName("verdictd.example").deadline(Duration.ofSeconds(5)).build();
        VerdictClient otherCa = client(keyedPort).apiKey(GOOD_KEY)
            .trustedCertificates(pem(otherPki, "ca.pem")).deadline(Duration.ofSeconds(5)).build();
        VerdictClient plain = client(keyedPort).apiKey(GOOD_KEY).deadline(Duration.ofSeconds(2))
            .build()) {
      assertEquals("java-team", named.getServerInfo().getCaller());
      assertEquals(Status.Code.UNAVAILABLE, codeOf(misnamed::getServerInfo));
      assertEquals(Status.Code.UNAVAILABLE, codeOf(otherCa::getServerInfo));
      Status.Code plainCode = codeOf(plain::getServerInfo);
      assertTrue("plaintext to a TLS port: " + plainCode,
          plainCode == Status.Code.UNAVAILABLE || plainCode == Status.Code.DEADLINE_EXCEEDED);
    }
  }

  @Test
  public void mutualTlsNeedsTheClientCertificate() throws Exception {
    File ca = pem(pki, "ca.pem");
    try (VerdictClient withCert = client(mtlsPort).caller("java-mtls").trustedCertificates(ca)
            .clientCertificate(pem(pki, "client.pem"), pem(pki, "client.key")).build();
        VerdictClient withoutCert = client(mtlsPort).caller("java-mtls").trustedCertificates(ca)
            .deadline(Duration.ofSeconds(5)).build();
        VerdictClient foreignCert = client(mtlsPort).caller("java-mtls").trustedCertificates(ca)
            .clientCertificate(pem(otherPki, "client.pem"), pem(otherPki, "client.key"))
            .deadline(Duration.ofSeconds(5)).build()) {
      GetServerInfoResponse info = withCert.getServerInfo();
      assertFalse(info.getKeyed());
      assertEquals("java-mtls", info.getCaller());
      long before = simRequests();
      assertEquals(Status.Code.UNAVAILABLE, codeOf(() -> withoutCert.checkIp("8.26.56.26")));
      assertEquals(Status.Code.UNAVAILABLE, codeOf(() -> foreignCert.checkIp("8.26.56.26")));
      assertEquals("refused connections spend nothing", 0, simRequests() - before);
      assertEquals(Source.SOURCE_UPSTREAM, withCert.checkIp("8.26.56.26").getSource());
    }
  }

  @Test
  public void aDeadlineShorterThanASlowUpstreamIsDeadlineExceeded() throws Exception {
    try (VerdictClient c = client(slowPort).caller("java-slow")
        .deadline(Duration.ofMillis(500)).build()) {
      c.getServerInfo();  // connected, so the deadline below measures the call alone
      long started = System.nanoTime();
      assertEquals(Status.Code.DEADLINE_EXCEEDED, codeOf(() -> c.checkIp("8.8.4.4")));
      long elapsedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
      assertTrue("gave up at the deadline, not the 3 s upstream: " + elapsedMs + " ms",
          elapsedMs >= 400 && elapsedMs < 2000);
    }
  }
}
