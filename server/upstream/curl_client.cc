// A ClickPatrolClient on the libcurl multi interface.
//
// Threading: one event thread owns the CURLM, the CURLSH and every easy handle, and runs all
// completion callbacks. Other threads only touch `pending_` (under `mu_`) and call
// curl_multi_wakeup(), which libcurl documents as safe from any thread. Because the share is only
// ever used from the event thread it needs no lock callbacks.
//
// Keep-alive: finished easy handles go back to a free list and are reset and reused; the open
// connections live in the multi's connection cache, so consecutive requests to ClickPatrol reuse
// one TCP+TLS connection instead of paying a handshake per click.

#include "server/upstream/curl_client.h"

#include <curl/curl.h>

#include <chrono>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/upstream/clickpatrol_client.h"
#include "server/upstream/response_parser.h"

namespace verdictd {
namespace {

constexpr absl::string_view kShuttingDown = "ClickPatrol client shutting down";

// How long the event thread sleeps in curl_multi_poll when nothing happens. libcurl shortens it
// to its own next timeout, and Fetch() and the destructor wake it, so this only bounds how long
// an idle thread sleeps between (harmless) spurious turns.
constexpr int kIdlePollMs = 1000;

absl::Status InitCurlOnce() {
  // curl_global_init is not thread-safe and must run once before any handle is created.
  static std::once_flag once;
  static CURLcode result = CURLE_OK;
  std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (result != CURLE_OK) {
    return absl::InternalError(
        absl::StrCat("curl_global_init failed: ", curl_easy_strerror(result)));
  }
  return absl::OkStatus();
}

long ToMillis(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  return ms < 1 ? 1 : static_cast<long>(ms);
}

// True when curl gave up before any byte of the request could have reached ClickPatrol, so
// retrying cannot spend a second click.
bool ProvablyNotSent(CURLcode code, curl_off_t pretransfer_us) {
  switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    // Rejected while parsing the URL, before any socket exists.
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return true;
    case CURLE_OPERATION_TIMEDOUT:
      // Pretransfer time is set when the connection (TCP + TLS) is ready and the request is about
      // to be written; zero means the timeout hit while still connecting.
      return pretransfer_us == 0;
    default:
      return false;
  }
}

struct Request {
  std::string ip;
  std::string user_agent;
  ClickPatrolClient::Callback done;
};

// One easy handle and the per-request state its callbacks write into. Owned by the event thread;
// reused across requests.
struct Transfer {
  CURL* easy = nullptr;
  Request request;
  std::string body;
  size_t max_body_bytes = 0;
  bool body_too_large = false;
  char error[CURL_ERROR_SIZE] = {};
  std::chrono::steady_clock::time_point started;
  std::string token;  // the one this request was sent with (secret), to scrub from errors

  ~Transfer() {
    if (easy != nullptr) {
      curl_easy_cleanup(easy);
    }
  }
};

size_t WriteBody(char* data, size_t size, size_t nmemb, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t n = size * nmemb;
  const size_t room = transfer->max_body_bytes - transfer->body.size();
  if (n > room) {
    // Keep what fits for the audit excerpt, then return a short count so curl aborts with
    // CURLE_WRITE_ERROR instead of reading an unbounded body into memory.
    transfer->body.append(data, room);
    transfer->body_too_large = true;
    return room;
  }
  transfer->body.append(data, n);
  return n;
}

// Percent-encodes `s` for a query string. Returns false (leaving `out` alone) only when libcurl
// cannot, i.e. out of memory or an absurdly long input; the request must then not be sent with
// an empty parameter, which ClickPatrol would answer as a bad token.
bool Escape(CURL* easy, absl::string_view s, std::string* out) {
  if (s.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return false;
  }
  char* escaped = curl_easy_escape(easy, s.data(), static_cast<int>(s.size()));
  if (escaped == nullptr) {
    return false;
  }
  out->append(escaped);
  curl_free(escaped);
  return true;
}

// The User-Agent header is built by curl as "User-Agent: <value>\r\n"; a CR or LF in a caller's
// user agent would inject headers, so control characters are replaced. The query parameter
// carries the exact string (it is percent-encoded).
std::string HeaderSafe(absl::string_view s) {
  std::string out(s);
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      c = ' ';
    }
  }
  return out;
}

class CurlClickPatrolClient final : public ClickPatrolClient {
 public:
  explicit CurlClickPatrolClient(CurlClientOptions options)
      : options_(std::move(options)), token_(options_.token) {}

  absl::Status SetToken(std::string token) override {
    if (token.empty()) {
      return absl::InvalidArgumentError("ClickPatrol API token is empty");
    }
    absl::MutexLock lock(&token_mu_);
    token_ = std::move(token);
    return absl::OkStatus();
  }

  ~CurlClickPatrolClient() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    curl_multi_wakeup(multi_);
    if (thread_.joinable()) {
      thread_.join();
    }
    // The event thread has failed every request and removed every handle; the order matters:
    // easy handles must leave the multi before it is cleaned up, and the share must outlive
    // every easy handle that uses it.
    curl_multi_cleanup(multi_);
    free_.clear();
    curl_share_cleanup(share_);
  }

  absl::Status Init() {
    share_ = curl_share_init();
    multi_ = curl_multi_init();
    if (share_ == nullptr || multi_ == nullptr) {
      return absl::InternalError("could not create libcurl handles");
    }
    curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(share_, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    // Keep at least one idle connection per concurrent request so that none is closed just
    // because the cache is full.
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(options_.max_concurrency));
    thread_ = std::thread([this] { Run(); });
    return absl::OkStatus();
  }

  void Fetch(std::string ip, std::string user_agent, Callback done) override {
    {
      absl::MutexLock lock(&mu_);
      if (!thread_exited_) {
        // While stopping, the event thread still drains `pending_` (so a callback that fetches
        // again from the event thread is answered too); it fails whatever it finds there.
        pending_.push_back(Request{std::move(ip), std::move(user_agent), std::move(done)});
        // Woken under the lock: the multi stays alive at least until thread_exited_ is set.
        // curl_multi_wakeup only writes to a socket pair, so it does not block.
        curl_multi_wakeup(multi_);
        return;
      }
    }
    // Only reachable when Fetch races with destruction, which is the caller's bug; answer
    // rather than drop the callback.
    FetchOutcome outcome;
    outcome.assessment = absl::UnavailableError(kShuttingDown);
    outcome.maybe_sent = false;
    done(std::move(outcome));
  }

 private:
  using Completion = std::pair<ClickPatrolClient::Callback, FetchOutcome>;

  void Run() {
    std::vector<Completion> completions;
    while (true) {
      std::deque<Request> admitted;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) {
          break;
        }
        const size_t limit = static_cast<size_t>(options_.max_concurrency);
        while (!pending_.empty() && active_transfers_.size() + admitted.size() < limit) {
          admitted.push_back(std::move(pending_.front()));
          pending_.pop_front();
        }
      }
      for (Request& request : admitted) {
        Start(std::move(request), &completions);
      }
      int running = 0;
      curl_multi_perform(multi_, &running);  // errors surface per transfer via info_read
      CollectFinished(&completions);
      if (!completions.empty()) {
        // Outside any lock: callbacks may call Fetch() again.
        RunCallbacks(&completions);
        // A slot may have been freed for a queued request; admit it before sleeping.
        continue;
      }
      curl_multi_poll(multi_, nullptr, 0, kIdlePollMs, nullptr);
    }
    Shutdown();
  }

  // Fails every request still in flight or queued, each exactly once, on this thread.
  void Shutdown() {
    std::vector<Completion> completions;
    for (Transfer* transfer : active_transfers_) {
      curl_multi_remove_handle(multi_, transfer->easy);
      FetchOutcome outcome;
      outcome.assessment = absl::UnavailableError(kShuttingDown);
      outcome.raw_body = std::move(transfer->body);
      outcome.maybe_sent = true;  // it may already be on the wire
      outcome.latency = absl::FromChrono(std::chrono::steady_clock::now() - transfer->started);
      completions.emplace_back(std::move(transfer->request.done), std::move(outcome));
      Release(std::unique_ptr<Transfer>(transfer));
    }
    active_transfers_.clear();
    RunCallbacks(&completions);
    while (true) {
      std::deque<Request> queued;
      {
        absl::MutexLock lock(&mu_);
        if (pending_.empty()) {
          thread_exited_ = true;
          break;
        }
        queued.swap(pending_);
      }
      for (Request& request : queued) {
        FetchOutcome outcome;
        outcome.assessment = absl::UnavailableError(kShuttingDown);
        outcome.maybe_sent = false;
        completions.emplace_back(std::move(request.done), std::move(outcome));
      }
      RunCallbacks(&completions);
    }
  }

  // Takes a handle from the free list (or makes one), configures it for `request` and adds it to
  // the multi. On failure the request is answered through `completions`.
  void Start(Request request, std::vector<Completion>* completions) {
    std::unique_ptr<Transfer> transfer;
    if (!free_.empty()) {
      transfer = std::move(free_.back());
      free_.pop_back();
      // Forget the previous request's options; the connection it used stays in the multi's
      // connection cache for this one to pick up.
      curl_easy_reset(transfer->easy);
    } else {
      transfer = std::make_unique<Transfer>();
      transfer->easy = curl_easy_init();
    }
    transfer->request = std::move(request);
    transfer->body.clear();
    transfer->body_too_large = false;
    transfer->error[0] = '\0';
    transfer->max_body_bytes = options_.max_body_bytes;
    transfer->started = std::chrono::steady_clock::now();

    absl::Status status = Configure(transfer.get());
    if (status.ok() && curl_multi_add_handle(multi_, transfer->easy) != CURLM_OK) {
      status = absl::InternalError("could not start a ClickPatrol request");
    }
    if (!status.ok()) {
      FetchOutcome outcome;
      outcome.assessment = std::move(status);
      outcome.maybe_sent = false;
      completions->emplace_back(std::move(transfer->request.done), std::move(outcome));
      Release(std::move(transfer));
      return;
    }
    active_transfers_.push_back(transfer.release());
  }

  absl::Status Configure(Transfer* transfer) {
    CURL* easy = transfer->easy;
    if (easy == nullptr) {
      return absl::InternalError("could not create a libcurl handle");
    }
    const Request& request = transfer->request;
    const std::string& base = options_.base_url;
    absl::string_view separator = "?";
    if (base.find('?') != std::string::npos) {
      separator = (base.back() == '?' || base.back() == '&') ? "" : "&";
    }
    {
      // Taken once per request: a SetToken after this applies to the next request, not this one.
      absl::MutexLock lock(&token_mu_);
      transfer->token = token_;
    }
    std::string url = absl::StrCat(base, separator, "token=");
    bool escaped = Escape(easy, transfer->token, &url);
    url.append("&ip=");
    escaped = escaped && Escape(easy, request.ip, &url);
    if (!request.user_agent.empty()) {
      url.append("&user_http_header=");
      escaped = escaped && Escape(easy, request.user_agent, &url);
    }
    if (!escaped) {
      return absl::InternalError("could not encode a ClickPatrol request");
    }

    bool ok = true;
    auto set = [&ok](CURLcode code) { ok = ok && code == CURLE_OK; };
    set(curl_easy_setopt(easy, CURLOPT_URL, url.c_str()));  // curl copies the string
    set(curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L));
    set(curl_easy_setopt(easy, CURLOPT_PRIVATE, transfer));
    set(curl_easy_setopt(easy, CURLOPT_SHARE, share_));
    set(curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, transfer->error));
    set(curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &WriteBody));
    set(curl_easy_setopt(easy, CURLOPT_WRITEDATA, transfer));
    // The token is in the URL: a redirect would carry it to wherever Location points.
    set(curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L));
    set(curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https"));
    // Timeouts must not use SIGALRM in a multi-threaded process.
    set(curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L));
    set(curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, ToMillis(options_.connect_timeout)));
    set(curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, ToMillis(options_.request_timeout)));
    // Verification is libcurl's default; it is set explicitly so that no later change to the
    // defaults (or to this code) can switch it off silently.
    set(curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L));
    set(curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L));
    if (!options_.ca_file.empty()) {
      set(curl_easy_setopt(easy, CURLOPT_CAINFO, options_.ca_file.c_str()));
    }
    set(curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L));
    if (!request.user_agent.empty()) {
      const std::string header_value = HeaderSafe(request.user_agent);
      set(curl_easy_setopt(easy, CURLOPT_USERAGENT, header_value.c_str()));
    }
    if (!ok) {
      return absl::InternalError("could not configure a ClickPatrol request");
    }
    return absl::OkStatus();
  }

  void CollectFinished(std::vector<Completion>* completions) {
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &queued)) {
      if (msg->msg != CURLMSG_DONE) {
        continue;
      }
      CURL* easy = msg->easy_handle;
      const CURLcode result = msg->data.result;  // read before remove_handle invalidates msg
      Transfer* raw = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &raw);
      curl_multi_remove_handle(multi_, easy);
      for (auto it = active_transfers_.begin(); it != active_transfers_.end(); ++it) {
        if (*it == raw) {
          active_transfers_.erase(it);
          break;
        }
      }
      std::unique_ptr<Transfer> transfer(raw);
      FetchOutcome outcome = Finish(*transfer, result);
      completions->emplace_back(std::move(transfer->request.done), std::move(outcome));
      Release(std::move(transfer));
    }
  }

  FetchOutcome Finish(Transfer& transfer, CURLcode result) {
    FetchOutcome outcome;
    outcome.latency = absl::FromChrono(std::chrono::steady_clock::now() - transfer.started);
    long http_status = 0;
    curl_easy_getinfo(transfer.easy, CURLINFO_RESPONSE_CODE, &http_status);
    outcome.http_status = static_cast<int>(http_status);
    outcome.raw_body = std::move(transfer.body);
    transfer.body = std::string();

    if (transfer.body_too_large) {
      outcome.assessment = absl::InternalError(
          absl::StrCat("ClickPatrol response exceeds ", options_.max_body_bytes, " bytes"));
      outcome.maybe_sent = true;
      return outcome;
    }
    if (result == CURLE_OK) {
      outcome.assessment = ParseClickPatrolResponse(outcome.http_status, outcome.raw_body);
      outcome.maybe_sent = true;
      return outcome;
    }
    curl_off_t pretransfer_us = 0;
    curl_easy_getinfo(transfer.easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us);
    outcome.maybe_sent = !ProvablyNotSent(result, pretransfer_us);
    outcome.assessment = TransportError(result, pretransfer_us, transfer.error, transfer.token);
    return outcome;
  }

  absl::Status TransportError(CURLcode code, curl_off_t pretransfer_us, const char* error,
                              const std::string& token) {
    std::string summary;
    switch (code) {
      case CURLE_COULDNT_RESOLVE_HOST:
        summary = "could not resolve ClickPatrol's host name";
        break;
      case CURLE_COULDNT_RESOLVE_PROXY:
        summary = "could not resolve the proxy for ClickPatrol";
        break;
      case CURLE_COULDNT_CONNECT:
        summary = "could not connect to ClickPatrol";
        break;
      case CURLE_OPERATION_TIMEDOUT:
        summary = pretransfer_us == 0
                      ? absl::StrCat("connecting to ClickPatrol timed out (connect timeout ",
                                     absl::FormatDuration(options_.connect_timeout), ")")
                      : absl::StrCat("ClickPatrol timed out after ",
                                     absl::FormatDuration(options_.request_timeout));
        break;
      case CURLE_SSL_CONNECT_ERROR:
        summary = "TLS handshake with ClickPatrol failed";
        break;
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_CERTPROBLEM:
        summary = "TLS verification of ClickPatrol failed";
        break;
      case CURLE_SEND_ERROR:
        summary = "connection reset while sending to ClickPatrol";
        break;
      case CURLE_RECV_ERROR:
        summary = "connection reset while receiving from ClickPatrol";
        break;
      case CURLE_GOT_NOTHING:
        summary = "ClickPatrol closed the connection without answering";
        break;
      case CURLE_PARTIAL_FILE:
        summary = "ClickPatrol's response was cut short";
        break;
      case CURLE_WEIRD_SERVER_REPLY:
      case CURLE_HTTP2:
      case CURLE_HTTP2_STREAM:
        summary = "ClickPatrol sent a malformed HTTP response";
        break;
      default:
        summary = "request to ClickPatrol failed";
        break;
    }
    std::string detail = error[0] != '\0' ? std::string(error) : curl_easy_strerror(code);
    // curl's message may name the host, which is fine, but nothing after a '?' (a URL's query,
    // which holds the token) may leave this function; and the token is scrubbed outright in case
    // it shows up some other way.
    if (const size_t q = detail.find('?'); q != std::string::npos) {
      detail.resize(q);
    }
    if (!token.empty()) {
      absl::StrReplaceAll({{token, "<token>"}}, &detail);
    }
    while (!detail.empty() && (detail.back() == '\n' || detail.back() == ' ')) {
      detail.pop_back();
    }
    return absl::UnavailableError(absl::StrCat(summary, ": ", detail));
  }

  void Release(std::unique_ptr<Transfer> transfer) {
    transfer->request = Request();
    transfer->token.clear();
    if (transfer->easy == nullptr) {
      return;
    }
    free_.push_back(std::move(transfer));
  }

  static void RunCallbacks(std::vector<Completion>* completions) {
    for (Completion& completion : *completions) {
      completion.first(std::move(completion.second));
    }
    completions->clear();
  }

  const CurlClientOptions options_;  // options_.token is only the first token_

  absl::Mutex token_mu_;
  std::string token_ ABSL_GUARDED_BY(token_mu_);

  absl::Mutex mu_;
  std::deque<Request> pending_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool thread_exited_ ABSL_GUARDED_BY(mu_) = false;

  // Owned by the event thread (and by the destructor once the thread has exited).
  CURLM* multi_ = nullptr;
  CURLSH* share_ = nullptr;
  std::vector<Transfer*> active_transfers_;
  std::vector<std::unique_ptr<Transfer>> free_;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ClickPatrolClient>> NewCurlClickPatrolClient(
    CurlClientOptions options) {
  if (options.base_url.empty()) {
    return absl::InvalidArgumentError("ClickPatrol base URL is empty");
  }
  if (options.token.empty()) {
    return absl::InvalidArgumentError("ClickPatrol API token is empty");
  }
  if (options.max_concurrency < 1) {
    return absl::InvalidArgumentError("ClickPatrol max_concurrency must be at least 1");
  }
  if (options.max_body_bytes < 1) {
    return absl::InvalidArgumentError("ClickPatrol max_body_bytes must be at least 1");
  }
  if (options.connect_timeout <= absl::ZeroDuration() ||
      options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClickPatrol timeouts must be positive");
  }
  if (absl::Status status = InitCurlOnce(); !status.ok()) {
    return status;
  }
  auto client = std::make_unique<CurlClickPatrolClient>(std::move(options));
  if (absl::Status status = client->Init(); !status.ok()) {
    return status;
  }
  return client;
}

}  // namespace verdictd
