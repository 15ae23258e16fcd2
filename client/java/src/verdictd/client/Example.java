package verdictd.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.File;
import java.util.Arrays;
import java.util.List;
import verdict.v1.CheckBatchResult;
import verdict.v1.CheckIpResponse;

/**
 * {@code Example [--ca=ca.pem] HOST:PORT IP...}: checks the IPs with one {@link
 * VerdictClient#checkBatchIps} and prints a line per IP. The API key comes from the environment
 * ({@code VERDICT_API_KEY}), never from a flag (a command line is visible to every user of the
 * machine); without it the caller is {@code VERDICT_CALLER} or "java-example" (open mode).
 */
public final class Example {
  private Example() {}

  public static void main(String[] args) throws Exception {
    File ca = null;
    int first = 0;
    if (args.length > 0 && args[0].startsWith("--ca=")) {
      ca = new File(args[0].substring("--ca=".length()));
      first = 1;
    }
    if (args.length - first < 2) {
      System.err.println("usage: Example [--ca=ca.pem] HOST:PORT IP...");
      System.exit(2);
    }
    String caller = System.getenv("VERDICT_CALLER");
    VerdictClient.Builder builder = VerdictClient.newBuilder(args[first])
        .apiKey(System.getenv("VERDICT_API_KEY"))
        .caller(caller != null ? caller : "java-example");
    if (ca != null) {
      builder.trustedCertificates(ca);
    }
    List<String> ips = Arrays.asList(args).subList(first + 1, args.length);
    int exitCode = 0;
    try (VerdictClient client = builder.build()) {
      List<CheckBatchResult> results = client.checkBatchIps(ips);
      for (int i = 0; i < results.size(); i++) {
        CheckBatchResult r = results.get(i);
        if (r.hasError()) {
          System.out.printf("%s\terror %s: %s%n", ips.get(i),
              Status.fromCodeValue(r.getError().getCode()).getCode(), r.getError().getMessage());
        } else {
          CheckIpResponse ok = r.getResult();
          System.out.printf("%s\t%s\t%s%s%n", ok.getVerdict().getIp(), ok.getVerdict().getScore(),
              ok.getSource(), ok.getClickSpent() ? "\tclick spent" : "");
        }
      }
    } catch (StatusRuntimeException e) {
      System.err.printf("verdictd: %s: %s%n", e.getStatus().getCode(),
          e.getStatus().getDescription());
      exitCode = 1;
    }
    System.exit(exitCode);  // after close(), so the channel is shut down first
  }
}
