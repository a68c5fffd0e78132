#include "train/sweep.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "models/language_model.h"

namespace seqtrain::train {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kTopKeys = {"base", "out", "method", "grid", "random", "samples", "list",
                                           "set", "repeats", "metric", "launcher", "nproc"};
const std::vector<std::string> kMetrics = {"val_loss", "best_val_loss", "val_bpb",     "best_val_bpb",
                                           "val_acc",  "best_val_acc",  "val_seq_acc", "tokens_per_s"};

std::string one_of(const std::vector<std::string>& valid) {
  std::string out;
  for (const std::string& v : valid) out += (out.empty() ? "" : " | ") + v;
  return out;
}

// Errors point at the spec line of the offending node: "<file>:<line>: <key>: <message>".
struct SpecReader {
  std::string file;

  [[noreturn]] void fail(const YAML::Node& at, const std::string& key, const std::string& message) const {
    std::string where = file;
    if (at.IsDefined() && at.Mark().line >= 0) where += ":" + std::to_string(at.Mark().line + 1);
    throw ConfigError(where + ": " + key + ": " + message);
  }
  std::string scalar(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) fail(n, key, "expected a scalar");
    return n.Scalar();
  }
  double number(const YAML::Node& n, const std::string& key) const {
    std::string s = scalar(n, key);
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || !std::isfinite(v)) fail(n, key, "'" + s + "' is not a number; expected a number");
    return v;
  }
  int64_t integer(const YAML::Node& n, const std::string& key, int64_t min) const {
    std::string s = scalar(n, key);
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || v < min)
      fail(n, key, "'" + s + "' is not an integer >= " + std::to_string(min) + "; expected one");
    return v;
  }
};

// A YAML value as the one-line text `--set key=value` parses back to the same value.
std::string flow_yaml(const YAML::Node& n) {
  YAML::Emitter e;
  e.SetSeqFormat(YAML::Flow);
  e.SetMapFormat(YAML::Flow);
  e << n;
  return e.c_str();
}

bool is_integer_text(const std::string& s) {
  if (s.empty()) return false;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  return i < s.size() && std::all_of(s.begin() + i, s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The id depends only on the axis values (sorted by key) and the repeat, so the same point keeps its
// folder when the spec's order, `set` or --set (e.g. data paths) change.
std::string trial_id(std::vector<std::pair<std::string, std::string>> axes, int64_t repeat) {
  std::sort(axes.begin(), axes.end());
  std::string canonical;
  for (const auto& [k, v] : axes) canonical += k + "=" + v + "\n";
  canonical += "repeat=" + std::to_string(repeat);
  char id[16];
  std::snprintf(id, sizeof id, "%012llx", (unsigned long long)(fnv1a64(canonical) >> 16));
  return id;
}

// A deterministic uniform in [0, 1) that does not depend on the standard library's distributions,
// so a random sweep draws the same trials on every machine and every re-run.
struct Rng {
  uint64_t state;
  double uniform() {
    state += 0x9e3779b97f4a7c15ull;  // splitmix64
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return double(z >> 11) * 0x1.0p-53;
  }
};

struct Distribution {
  std::string key, dist;
  double min = 0, max = 0;
  bool integer = false;  // uniform over integers when min and max are written as integers
  std::vector<std::string> values;  // choice
};

Distribution read_distribution(const SpecReader& r, const std::string& key, const YAML::Node& n) {
  const std::string where = "random." + key;
  if (!n.IsMap()) r.fail(n, where, "expected {dist: uniform | log_uniform | choice, ...}");
  Distribution d;
  d.key = key;
  if (!n["dist"]) r.fail(n, where, "no dist; expected dist: uniform | log_uniform | choice");
  d.dist = r.scalar(n["dist"], where + ".dist");
  std::vector<std::string> allowed;
  if (d.dist == "uniform" || d.dist == "log_uniform") {
    allowed = {"dist", "min", "max"};
    for (const char* k : {"min", "max"})
      if (!n[k]) r.fail(n, where, std::string("no ") + k + "; " + d.dist + " needs min and max");
    d.min = r.number(n["min"], where + ".min");
    d.max = r.number(n["max"], where + ".max");
    d.integer = d.dist == "uniform" && is_integer_text(n["min"].Scalar()) && is_integer_text(n["max"].Scalar());
    if (!(d.max > d.min)) r.fail(n, where, "max must be greater than min");
    if (d.dist == "log_uniform" && d.min <= 0) r.fail(n["min"], where + ".min", "log_uniform needs min > 0");
  } else if (d.dist == "choice") {
    allowed = {"dist", "values"};
    const YAML::Node v = n["values"];
    if (!v || !v.IsSequence() || v.size() == 0)
      r.fail(v ? v : n, where + ".values", "choice needs a non-empty list of values");
    for (const YAML::Node& item : v) d.values.push_back(flow_yaml(item));
  } else {
    r.fail(n["dist"], where + ".dist", "unknown distribution '" + d.dist + "'; expected uniform | log_uniform | choice");
  }
  for (const auto& kv : n) {
    std::string k = kv.first.Scalar();
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
      r.fail(kv.first, where + "." + k, "not a parameter of " + d.dist + "; expected " + one_of(allowed));
  }
  return d;
}

std::string sample(Distribution& d, Rng& rng) {
  double u = rng.uniform();
  if (d.dist == "choice") return d.values[std::min(d.values.size() - 1, size_t(u * double(d.values.size())))];
  char text[32];
  if (d.integer) {
    int64_t lo = int64_t(d.min), hi = int64_t(d.max);
    std::snprintf(text, sizeof text, "%lld", (long long)(lo + std::min<int64_t>(hi - lo, int64_t(u * double(hi - lo + 1)))));
  } else {
    double v = d.dist == "uniform" ? d.min + u * (d.max - d.min) : std::exp(std::log(d.min) + u * (std::log(d.max) - std::log(d.min)));
    std::snprintf(text, sizeof text, "%.6g", v);
  }
  return text;
}

using Point = std::vector<std::pair<std::string, std::string>>;

// The settings one grid value stands for: {key: value}, or, when every value of the axis is a map, the
// map's keys set together (a grouped axis: `shape: [{training.seq_len: 64, data.task.mqar.num_kv_pairs: 4},
// ...]` varies both keys in step; the axis name itself is only a label).
Point axis_value(const SpecReader& r, const std::string& axis, const YAML::Node& values, size_t i) {
  const YAML::Node v = values[i];
  bool grouped = values[0].IsMap();
  if (v.IsMap() != grouped)
    r.fail(v, "grid." + axis + "[" + std::to_string(i) + "]",
           "mixes maps and plain values; expected all values of a grouped axis to be {key: value} maps, or none");
  if (!grouped) return {{axis, flow_yaml(v)}};
  if (v.size() == 0) r.fail(v, "grid." + axis + "[" + std::to_string(i) + "]", "empty map; expected {key: value, ...}");
  Point p;
  for (const auto& kv : v) p.emplace_back(kv.first.Scalar(), flow_yaml(kv.second));
  return p;
}

std::vector<Point> grid_points(const SpecReader& r, const YAML::Node& grid) {
  if (!grid.IsMap() || grid.size() == 0) r.fail(grid, "grid", "expected a map of key: [values]");
  std::vector<Point> points = {{}};
  for (const auto& kv : grid) {
    const std::string key = kv.first.Scalar();
    if (!kv.second.IsSequence() || kv.second.size() == 0)
      r.fail(kv.second, "grid." + key, "empty or not a list; expected a non-empty list of values");
    std::vector<Point> next;
    for (const Point& p : points)
      for (size_t i = 0; i < kv.second.size(); ++i) {
        next.push_back(p);
        for (auto& setting : axis_value(r, key, kv.second, i)) next.back().push_back(std::move(setting));
      }
    points = std::move(next);
  }
  return points;
}

std::vector<Point> random_points(const SpecReader& r, const YAML::Node& random, const YAML::Node& samples) {
  if (!random.IsMap() || random.size() == 0) r.fail(random, "random", "expected a map of key: {dist: ...}");
  if (!samples) r.fail(random, "samples", "method random needs samples: N");
  int64_t n = r.integer(samples, "samples", 1);
  std::vector<Distribution> dists;
  for (const auto& kv : random) dists.push_back(read_distribution(r, kv.first.Scalar(), kv.second));
  Rng rng{0};
  std::vector<Point> points(n);
  for (Point& p : points)
    for (Distribution& d : dists) p.emplace_back(d.key, sample(d, rng));
  return points;
}

std::vector<Point> list_points(const SpecReader& r, const YAML::Node& list) {
  if (!list.IsSequence() || list.size() == 0) r.fail(list, "list", "expected a non-empty list of {key: value} maps");
  std::vector<Point> points;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    if (!item.IsMap() || item.size() == 0)
      r.fail(item, "list[" + std::to_string(i) + "]", "empty or not a map; expected {key: value, ...}");
    Point p;
    for (const auto& kv : item) p.emplace_back(kv.first.Scalar(), flow_yaml(kv.second));
    points.push_back(p);
  }
  return points;
}

// ---- results ----

// The number after "key": in a one-line JSON object, or NaN.
double json_number(const std::string& line, const std::string& key) {
  size_t at = line.find("\"" + key + "\":");
  if (at == std::string::npos) return NAN;
  const char* start = line.c_str() + at + key.size() + 3;
  char* end = nullptr;
  double v = std::strtod(start, &end);
  return end == start ? NAN : v;  // null
}

struct Summary {
  std::string status;
  double n_params = NAN, val_loss = NAN, best_val_loss = NAN, val_bpb = NAN, best_val_bpb = NAN;
  // Tasks (data.task): answer accuracy and whole-sample accuracy at training.seq_len, and the answer
  // accuracy at each of data.task.eval_lengths, of the last evaluation.
  double val_acc = NAN, best_val_acc = NAN, val_seq_acc = NAN;
  std::map<int64_t, double> val_acc_at;
  double tokens_per_s = NAN, tokens_seen = NAN, wall_s = NAN;
  std::string code;  // the stack's compact layer code (model.layers_code())
  double flops_per_token = NAN;
  double mfu = NAN;           // median over the logged steps, % of the bf16 dense peak (GPU runs only)
  double peak_mem_gib = NAN;  // largest memory logged: the GPU pool's reserved bytes, or the CPU's resident set
};

std::string acc_at_key(int64_t length) { return "val_acc@" + std::to_string(length); }

// L of a metric named "val_acc@L" (the accuracy at evaluation length L), else -1.
int64_t metric_length(const std::string& metric) {
  const std::string prefix = "val_acc@";
  if (metric.compare(0, prefix.size(), prefix) != 0 || !is_integer_text(metric.substr(prefix.size()))) return -1;
  const int64_t length = std::stoll(metric.substr(prefix.size()));
  return length > 0 ? length : -1;
}

// Reads metrics.jsonl; a resumed run repeats the steps after its checkpoint, the last line wins.
// `eval_lengths` are the trial's data.task.eval_lengths.
void read_metrics(const fs::path& file, const std::vector<int64_t>& eval_lengths, Summary& s) {
  std::ifstream in(file);
  std::map<int64_t, std::string> train, eval;
  for (std::string line; std::getline(in, line);) {
    double step = json_number(line, "step");
    if (std::isnan(step)) continue;
    if (line.find("\"kind\": \"train\"") != std::string::npos) train[int64_t(step)] = line;
    if (line.find("\"kind\": \"eval\"") != std::string::npos) eval[int64_t(step)] = line;
  }
  for (const auto& [step, line] : eval) {
    s.val_loss = json_number(line, "loss");
    s.val_bpb = json_number(line, "bpb");
    s.val_acc = json_number(line, "acc");
    s.val_seq_acc = json_number(line, "seq_acc");
    for (int64_t length : eval_lengths) s.val_acc_at[length] = json_number(line, "acc@" + std::to_string(length));
    if (!(s.best_val_loss <= s.val_loss)) s.best_val_loss = s.val_loss;
    if (!(s.best_val_bpb <= s.val_bpb)) s.best_val_bpb = s.val_bpb;
    if (!(s.best_val_acc >= s.val_acc)) s.best_val_acc = s.val_acc;
  }
  std::vector<double> speeds, mfus;
  for (const auto& [step, line] : train) {
    speeds.push_back(json_number(line, "tokens_per_s"));
    const double mfu = json_number(line, "mfu"), mem = json_number(line, "mem_gib");
    if (!std::isnan(mfu)) mfus.push_back(mfu);
    if (!std::isnan(mem) && !(s.peak_mem_gib >= mem)) s.peak_mem_gib = mem;
  }
  auto median = [](std::vector<double>& v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  if (!speeds.empty()) {
    s.tokens_per_s = median(speeds);
    s.tokens_seen = json_number(train.rbegin()->second, "tokens_seen");
  }
  if (!mfus.empty()) s.mfu = median(mfus);
}

std::string number_text(double v, const char* format = "%.9g") {
  if (std::isnan(v)) return "";
  char text[40];
  std::snprintf(text, sizeof text, format, v);
  return text;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

void write_summary(const fs::path& file, const Trial& t, const Summary& s) {
  auto num = [](double v) { return std::isnan(v) ? std::string("null") : number_text(v); };
  std::ostringstream o;
  o << "{\"trial_id\": \"" << t.id << "\", \"status\": \"" << s.status << "\", \"repeat\": " << t.repeat
    << ", \"overrides\": {";
  for (size_t i = 0; i < t.axes.size(); ++i)
    o << (i ? ", " : "") << "\"" << json_escape(t.axes[i].first) << "\": \"" << json_escape(t.axes[i].second) << "\"";
  o << "}, \"n_params\": " << num(s.n_params) << ", \"val_loss\": " << num(s.val_loss)
    << ", \"best_val_loss\": " << num(s.best_val_loss) << ", \"val_bpb\": " << num(s.val_bpb)
    << ", \"best_val_bpb\": " << num(s.best_val_bpb) << ", \"val_acc\": " << num(s.val_acc)
    << ", \"best_val_acc\": " << num(s.best_val_acc) << ", \"val_seq_acc\": " << num(s.val_seq_acc);
  for (const auto& [length, acc] : s.val_acc_at) o << ", \"" << acc_at_key(length) << "\": " << num(acc);
  o << ", \"tokens_per_s\": " << num(s.tokens_per_s) << ", \"mfu\": " << num(s.mfu)
    << ", \"peak_mem_gib\": " << num(s.peak_mem_gib) << ", \"tokens_seen\": " << num(s.tokens_seen)
    << ", \"code\": \"" << json_escape(s.code) << "\", \"flops_per_token\": " << num(s.flops_per_token)
    << ", \"wall_s\": " << number_text(s.wall_s, "%.3f") << "}\n";
  // Written beside and renamed: a summary that exists is complete (it is what marks a trial done).
  fs::path tmp = file;
  tmp += ".tmp";
  std::ofstream(tmp) << o.str();
  fs::rename(tmp, file);
}

bool read_summary(const fs::path& file, const std::vector<int64_t>& eval_lengths, Summary& s) {
  std::ifstream in(file);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t at = text.find("\"status\": \"");
  if (at == std::string::npos) return false;
  at += 11;
  s.status = text.substr(at, text.find('"', at) - at);
  s.n_params = json_number(text, "n_params");
  s.val_loss = json_number(text, "val_loss");
  s.best_val_loss = json_number(text, "best_val_loss");
  s.val_bpb = json_number(text, "val_bpb");
  s.best_val_bpb = json_number(text, "best_val_bpb");
  s.val_acc = json_number(text, "val_acc");
  s.best_val_acc = json_number(text, "best_val_acc");
  s.val_seq_acc = json_number(text, "val_seq_acc");
  for (int64_t length : eval_lengths) s.val_acc_at[length] = json_number(text, acc_at_key(length));
  s.tokens_per_s = json_number(text, "tokens_per_s");
  s.mfu = json_number(text, "mfu");
  s.peak_mem_gib = json_number(text, "peak_mem_gib");
  s.tokens_seen = json_number(text, "tokens_seen");
  s.flops_per_token = json_number(text, "flops_per_token");
  const size_t code_at = text.find("\"code\": \"");
  if (code_at != std::string::npos) {
    const size_t from = code_at + 9;
    s.code = text.substr(from, text.find('"', from) - from);
  }
  s.wall_s = json_number(text, "wall_s");
  return true;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// Every data.task.eval_lengths entry of any trial, ascending: one val_acc@L column each.
std::vector<int64_t> all_eval_lengths(const SweepSpec& spec) {
  std::set<int64_t> lengths;
  for (const Trial& t : spec.trials) lengths.insert(t.config.data.task.eval_lengths.begin(), t.config.data.task.eval_lengths.end());
  return std::vector<int64_t>(lengths.begin(), lengths.end());
}

void write_results(const SweepSpec& spec) {
  const std::vector<int64_t> lengths = all_eval_lengths(spec);
  std::ostringstream o;
  o << "trial_id,status";
  for (const std::string& k : spec.swept_keys) o << "," << csv_field(k);
  o << ",code,n_params,flops_per_token,val_loss,best_val_loss,val_bpb,val_acc,best_val_acc,val_seq_acc";
  for (int64_t length : lengths) o << "," << acc_at_key(length);
  o << ",tokens_per_s,mfu,peak_mem_gib,tokens_seen,wall_s\n";
  for (const Trial& t : spec.trials) {
    Summary s;
    if (!read_summary(fs::path(spec.out) / "trials" / t.id / "summary.json", lengths, s)) continue;
    o << t.id << "," << s.status;
    for (const std::string& k : spec.swept_keys) {
      auto it = std::find_if(t.axes.begin(), t.axes.end(), [&](const auto& a) { return a.first == k; });
      o << "," << (it == t.axes.end() ? "" : csv_field(it->second));
    }
    o << "," << csv_field(s.code) << "," << number_text(s.n_params, "%.0f") << ","
      << number_text(s.flops_per_token, "%.0f") << "," << number_text(s.val_loss) << ","
      << number_text(s.best_val_loss) << "," << number_text(s.val_bpb) << "," << number_text(s.val_acc) << ","
      << number_text(s.best_val_acc) << "," << number_text(s.val_seq_acc);
    for (int64_t length : lengths) o << "," << number_text(s.val_acc_at[length]);
    o << "," << number_text(s.tokens_per_s, "%.1f") << "," << number_text(s.mfu, "%.2f") << ","
      << number_text(s.peak_mem_gib, "%.3f") << "," << number_text(s.tokens_seen, "%.0f") << ","
      << number_text(s.wall_s, "%.3f") << "\n";
  }
  fs::path file = fs::path(spec.out) / "results.csv", tmp = file;
  tmp += ".tmp";
  std::ofstream(tmp) << o.str();
  fs::rename(tmp, file);
}

// ---- running ----

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

// Set by the SIGINT/SIGTERM handler run_sweep installs; the loop polls it.
volatile std::sig_atomic_t g_stop_signal = 0;

void on_sweep_stop_signal(int sig) { g_stop_signal = sig; }

// Starts argv with stdout and stderr appended to `log` and, when `gpu` >= 0, CUDA_VISIBLE_DEVICES=gpu.
pid_t start_child(const std::vector<std::string>& argv, const fs::path& log, int gpu) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = getpid();
  // SIGINT/SIGTERM stay blocked until the child has the default handlers back (the sweep's handler
  // would swallow a stop sent to the child before its exec).
  sigset_t stop_signals, old_mask;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &stop_signals, &old_mask);
  pid_t pid = fork();
  const int fork_errno = errno;
  if (pid == 0) {
    // A trial must not outlive a killed sweep (SIGTERM: the trainer checkpoints and exits).
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    FILE* f = std::fopen(log.c_str(), "a");
    if (!f) _exit(127);
    dup2(fileno(f), 1);
    dup2(fileno(f), 2);
    if (gpu >= 0) setenv("CUDA_VISIBLE_DEVICES", std::to_string(gpu).c_str(), 1);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "seqtrain sweep: cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  ST_CHECK(pid > 0, "fork failed: ", std::strerror(fork_errno));
  return pid;
}

struct ChildResult {
  int exit_code = 0;
  bool timed_out = false;
};

// A trial whose child process runs: its index in spec.trials, job slot, start time.
struct RunningTrial {
  size_t index = 0;
  size_t slot = 0;
  pid_t pid = 0;
  std::chrono::steady_clock::time_point start;
  bool timed_out = false;  // killed with SIGKILL after the timeout
};

// Stops the running trials after the sweep got `sig`: SIGTERM to each (the trainer checkpoints at the
// end of its step and exits), SIGKILL to those still running after a grace period or a second signal.
void stop_trials(const std::vector<RunningTrial>& running, int sig) {
  constexpr double kGraceS = 30;
  std::printf("\nsweep: got %s, stopping %zu running trial%s\n", sig == SIGINT ? "SIGINT" : "SIGTERM", running.size(),
              running.size() == 1 ? "" : "s");
  std::fflush(stdout);
  g_stop_signal = 0;
  for (const RunningTrial& r : running) kill(r.pid, SIGTERM);
  const auto start = std::chrono::steady_clock::now();
  std::vector<pid_t> left;
  for (const RunningTrial& r : running) left.push_back(r.pid);
  bool killed = false;
  while (!left.empty()) {
    left.erase(std::remove_if(left.begin(), left.end(), [](pid_t pid) { return waitpid(pid, nullptr, WNOHANG) != 0; }),
               left.end());
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!killed && (g_stop_signal || elapsed > kGraceS)) {
      for (pid_t pid : left) kill(pid, SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string classify(const ChildResult& r, const fs::path& output, const fs::path& rank_log) {
  if (r.timed_out) return "timeout";
  if (r.exit_code == 0) return "ok";
  std::string text;
  for (const fs::path& f : {output, rank_log}) {
    std::ifstream in(f);
    text += std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  if (text.find("training loss is") != std::string::npos || text.find("gradient norm is") != std::string::npos)
    return "nan";
  if (text.find("out of GPU memory") != std::string::npos) return "oom";
  return "crash";
}

// "val loss 1.2345" and, for tasks, ", val acc 0.9876".
std::string quality(const Summary& s) {
  std::string text = "val loss " + (std::isnan(s.val_loss) ? std::string("-") : number_text(s.val_loss, "%.4f"));
  if (!std::isnan(s.val_acc)) text += ", val acc " + number_text(s.val_acc, "%.4f");
  return text;
}

std::string describe(const Trial& t) {
  std::string s;
  for (const auto& [k, v] : t.axes) s += (s.empty() ? "" : " ") + k + "=" + v;
  if (t.repeat) s += " repeat=" + std::to_string(t.repeat);
  return s;
}

}  // namespace

SweepSpec load_sweep(const std::string& path, const SweepOptions& options) {
  SpecReader r{path};
  if (!fs::is_regular_file(path)) throw ConfigError(path + ": no such sweep spec file");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (!root.IsMap()) r.fail(root, "(top level)", "expected a map with base, out, method, ...");
  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    if (std::find(kTopKeys.begin(), kTopKeys.end(), key) != kTopKeys.end()) continue;
    const std::string* best = nullptr;
    size_t best_distance = 0;
    for (const std::string& k : kTopKeys) {
      size_t d = edit_distance(key, k);
      if (!best || d < best_distance) best = &k, best_distance = d;
    }
    r.fail(kv.first, key, best_distance <= 2 ? "unknown key; did you mean '" + *best + "'?"
                                             : "unknown key; expected one of " + one_of(kTopKeys));
  }
  for (const char* k : {"base", "out", "method"})
    if (!root[k]) r.fail(root, k, "missing; a sweep needs base, out and method");

  SweepSpec spec;
  spec.path = path;
  spec.base = r.scalar(root["base"], "base");
  spec.out = options.out.empty() ? r.scalar(root["out"], "out") : options.out;
  spec.method = r.scalar(root["method"], "method");
  if (!fs::is_regular_file(spec.base)) r.fail(root["base"], "base", "no such file '" + spec.base + "'");

  const std::vector<std::string> methods = {"grid", "random", "list"};
  if (std::find(methods.begin(), methods.end(), spec.method) == methods.end())
    r.fail(root["method"], "method", "'" + spec.method + "'; expected grid | random | list");
  for (const std::string& m : methods) {
    if (m == spec.method && !root[m]) r.fail(root, m, "missing; method " + m + " needs a " + m + " section");
    if (m != spec.method && root[m]) r.fail(root[m], m, "given but method is " + spec.method);
  }
  if (root["samples"] && spec.method != "random") r.fail(root["samples"], "samples", "only for method random");
  std::vector<Point> points = spec.method == "grid"     ? grid_points(r, root["grid"])
                              : spec.method == "random" ? random_points(r, root["random"], root["samples"])
                                                        : list_points(r, root["list"]);

  std::vector<std::string> fixed;
  if (root["set"] && !root["set"].IsNull()) {
    if (!root["set"].IsMap()) r.fail(root["set"], "set", "expected a map of key: value");
    for (const auto& kv : root["set"]) fixed.push_back(kv.first.Scalar() + "=" + flow_yaml(kv.second));
  }
  fixed.insert(fixed.end(), options.set.begin(), options.set.end());
  int64_t repeats = root["repeats"] ? r.integer(root["repeats"], "repeats", 1) : 1;

  if (const YAML::Node m = root["metric"]) {
    if (!m.IsMap()) r.fail(m, "metric", "expected {name: val_loss, goal: minimize}");
    for (const auto& kv : m)
      if (kv.first.Scalar() != "name" && kv.first.Scalar() != "goal")
        r.fail(kv.first, "metric." + kv.first.Scalar(), "unknown key; expected name | goal");
    if (m["name"]) spec.metric = r.scalar(m["name"], "metric.name");
    if (m["goal"]) spec.goal = r.scalar(m["goal"], "metric.goal");
    if (std::find(kMetrics.begin(), kMetrics.end(), spec.metric) == kMetrics.end() && metric_length(spec.metric) < 0)
      r.fail(m["name"], "metric.name", "'" + spec.metric + "'; expected " + one_of(kMetrics) + " | val_acc@L");
    if (spec.goal != "minimize" && spec.goal != "maximize")
      r.fail(m["goal"], "metric.goal", "'" + spec.goal + "'; expected minimize | maximize");
  }
  if (root["launcher"] && !root["launcher"].IsNull()) spec.launcher = r.scalar(root["launcher"], "launcher");
  if (root["nproc"]) spec.nproc = r.integer(root["nproc"], "nproc", 1);
  if (root["nproc"] && spec.launcher.empty()) r.fail(root["nproc"], "nproc", "given but launcher is null");

  std::set<std::string> ids;
  for (const Point& p : points) {
    for (const auto& [k, v] : p)
      if (std::find(spec.swept_keys.begin(), spec.swept_keys.end(), k) == spec.swept_keys.end())
        spec.swept_keys.push_back(k);
    for (int64_t rep = 0; rep < repeats; ++rep) {
      Trial t;
      t.axes = p;
      t.repeat = rep;
      t.id = trial_id(p, rep);
      if (!ids.insert(t.id).second) continue;  // a point drawn or listed twice runs once
      std::vector<std::string> overrides = fixed;
      for (const auto& [k, v] : p) overrides.push_back(k + "=" + v);
      try {
        t.config = load_config(spec.base, overrides);
      } catch (const std::exception& e) {
        throw ConfigError(path + ": trial " + t.id + " (" + describe(t) + "): " + e.what());
      }
      t.config.run.seed += uint64_t(rep);
      t.config.run.dir = (fs::path(spec.out) / "trials" / t.id).string();
      t.config.run.name = t.config.run.name + "-" + t.id;
      spec.trials.push_back(std::move(t));
    }
  }
  return spec;
}

// Trial folders left by an earlier run of the sweep whose trial.yaml differs from the config the
// spec gives now (trial ids hash only the axis values, so a changed base, `set` or --set keeps the
// id): an error naming them and the changed keys, or with --rerun-changed renamed aside so that
// they run again. Checked before any trial starts.
void check_changed_trials(const SweepSpec& spec, const SweepOptions& options) {
  const fs::path trials = fs::path(spec.out) / "trials";
  std::vector<std::pair<const Trial*, std::vector<std::string>>> changed;
  for (const Trial& t : spec.trials) {
    const fs::path file = trials / t.id / "trial.yaml";
    if (!fs::exists(file)) continue;
    std::vector<std::string> diff;
    try {
      Config earlier = load_config(file.string());
      earlier.run.dir = t.config.run.dir;  // where the sweep folder lies now, if it was moved
      diff = config_differences(earlier, t.config);
    } catch (const std::exception& e) {
      diff = {std::string("unreadable: ") + e.what()};
    }
    if (!diff.empty()) changed.emplace_back(&t, std::move(diff));
  }
  if (changed.empty()) return;
  if (options.rerun_changed) {
    for (const auto& [t, diff] : changed) {
      int k = 1;
      while (fs::exists(trials / (t->id + ".changed-" + std::to_string(k)))) ++k;
      const fs::path aside = trials / (t->id + ".changed-" + std::to_string(k));
      fs::rename(trials / t->id, aside);
      std::printf("trial %s (%s): config changed (%s%s); earlier run moved to %s\n", t->id.c_str(),
                  describe(*t).c_str(), diff[0].c_str(), diff.size() > 1 ? ", ..." : "", aside.string().c_str());
    }
    return;
  }
  std::ostringstream msg;
  msg << changed.size() << " trial folder(s) in " << spec.out
      << " hold a run of another config than the spec gives now (earlier vs now):";
  for (size_t i = 0; i < changed.size() && i < 5; ++i) {
    const auto& [t, diff] = changed[i];
    msg << "\n  " << t->id << " (" << describe(*t) << "): " << diff[0];
    if (diff.size() > 1) msg << " (+" << diff.size() - 1 << " more)";
  }
  if (changed.size() > 5) msg << "\n  ... and " << changed.size() - 5 << " more";
  msg << "\nexpected the same config; use another --out, or --rerun-changed to move those folders aside"
         " (trials/<id>.changed-K) and run them again";
  throw ConfigError(msg.str());
}

int run_sweep(const SweepSpec& spec, const SweepOptions& options, const std::string& self) {
  ST_CHECK(options.jobs >= 1, "sweep: jobs must be >= 1, got ", options.jobs);
  const fs::path out = spec.out;
  check_changed_trials(spec, options);
  fs::create_directories(out / "trials");
  fs::copy_file(spec.path, out / "spec.yaml", fs::copy_options::overwrite_existing);
  const size_t n = spec.trials.size(), jobs = size_t(options.jobs);
  int failed = 0;
  std::printf("sweep %s: %zu trials (%s) in %s", spec.path.c_str(), n, spec.method.c_str(), spec.out.c_str());
  if (jobs > 1) std::printf(", %zu at a time", jobs);
  std::printf("\n");

  // A trial ended: its summary, results.csv, its line.
  auto finish = [&](const RunningTrial& r, int status) {
    const Trial& t = spec.trials[r.index];
    const fs::path dir = out / "trials" / t.id;
    const std::vector<int64_t>& lengths = t.config.data.task.eval_lengths;
    ChildResult child;
    child.timed_out = r.timed_out;
    child.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    Summary s;
    s.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - r.start).count();
    s.status = classify(child, dir / "output.txt", dir / "logs" / "rank-0.log");
    LanguageModel model(t.config.model);
    s.n_params = double(model.num_parameters());
    s.flops_per_token = model.flops_per_token(t.config.training.seq_len);
    s.code = t.config.model.layers_code();
    read_metrics(dir / "metrics.jsonl", lengths, s);
    write_summary(dir / "summary.json", t, s);
    write_results(spec);
    failed += s.status != "ok";
    std::printf("[%zu/%zu] %s %s: %s%s, %s, %.1f s\n", r.index + 1, n, t.id.c_str(), describe(t).c_str(),
                s.status.c_str(),
                s.status == "ok" ? ""
                                 : (" (exit " + std::to_string(child.exit_code) + ", see " +
                                    (dir / "output.txt").string() + ")").c_str(),
                quality(s).c_str(), s.wall_s);
    std::fflush(stdout);
  };

  // SIGINT/SIGTERM stop the running trials (no summary: a re-run resumes them) and end the sweep.
  struct sigaction stop = {}, old_int = {}, old_term = {};
  stop.sa_handler = on_sweep_stop_signal;
  stop.sa_flags = SA_RESTART;
  sigemptyset(&stop.sa_mask);
  g_stop_signal = 0;
  sigaction(SIGINT, &stop, &old_int);
  sigaction(SIGTERM, &stop, &old_term);
  auto restore_signals = [&] {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  };

  std::vector<RunningTrial> running;
  size_t next = 0;
  while (next < n || !running.empty()) {
    if (const int sig = g_stop_signal) {
      stop_trials(running, sig);
      write_results(spec);
      restore_signals();
      throw SweepInterrupted(sig, running.size());
    }
    // Start trials in order while a job slot is free.
    while (next < n && running.size() < jobs && !g_stop_signal) {
      const size_t i = next++;
      const Trial& t = spec.trials[i];
      const fs::path dir = out / "trials" / t.id;
      Summary s;
      if (read_summary(dir / "summary.json", t.config.data.task.eval_lengths, s) &&
          (s.status == "ok" || !options.retry_failed)) {
        std::printf("[%zu/%zu] %s %s: %s (done before), %s\n", i + 1, n, t.id.c_str(), describe(t).c_str(),
                    s.status.c_str(), quality(s).c_str());
        failed += s.status != "ok";
        continue;
      }
      fs::create_directories(dir);
      fs::remove(dir / "summary.json");
      {
        std::ofstream f(dir / "trial.yaml");
        f << to_yaml(t.config);
      }
      std::vector<std::string> argv;
      if (!spec.launcher.empty())
        for (const std::string& w : split_words(spec.launcher))
          argv.push_back(replace_all(w, "{nproc}", std::to_string(spec.nproc)));
      argv.insert(argv.end(), {self, "train", (dir / "trial.yaml").string()});
      RunningTrial r;
      r.index = i;
      auto slot_taken = [&](size_t slot) {
        return std::any_of(running.begin(), running.end(), [&](const RunningTrial& o) { return o.slot == slot; });
      };
      while (slot_taken(r.slot)) ++r.slot;
      const int gpu = options.gpus.empty() ? -1 : options.gpus[r.slot % options.gpus.size()];
      r.start = std::chrono::steady_clock::now();
      r.pid = start_child(argv, dir / "output.txt", gpu);
      running.push_back(r);
    }
    // Collect the trials that ended, kill those past the timeout; sleep only when none ended (an
    // ended one's slot is refilled at once).
    bool ended = false;
    for (auto it = running.begin(); it != running.end();) {
      int status = 0;
      const pid_t done = waitpid(it->pid, &status, WNOHANG);
      ST_CHECK(done >= 0, "waitpid failed: ", std::strerror(errno));
      if (done == it->pid) {
        const RunningTrial r = *it;
        it = running.erase(it);
        finish(r, status);
        ended = true;
        continue;
      }
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - it->start).count();
      if (options.timeout_s > 0 && elapsed > options.timeout_s && !it->timed_out) {
        kill(it->pid, SIGKILL);
        it->timed_out = true;
      }
      ++it;
    }
    if (!ended && !running.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  restore_signals();
  write_results(spec);

  const Trial* best = nullptr;
  double best_value = NAN;
  for (const Trial& t : spec.trials) {
    Summary s;
    const int64_t length = metric_length(spec.metric);
    if (!read_summary(out / "trials" / t.id / "summary.json", t.config.data.task.eval_lengths, s) || s.status != "ok")
      continue;
    std::map<std::string, double> metrics = {{"val_loss", s.val_loss},         {"best_val_loss", s.best_val_loss},
                                             {"val_bpb", s.val_bpb},           {"best_val_bpb", s.best_val_bpb},
                                             {"val_acc", s.val_acc},           {"best_val_acc", s.best_val_acc},
                                             {"val_seq_acc", s.val_seq_acc}, {"tokens_per_s", s.tokens_per_s}};
    const double v = length > 0 ? (s.val_acc_at.count(length) ? s.val_acc_at[length] : NAN) : metrics[spec.metric];
    if (std::isnan(v)) continue;
    if (!best || (spec.goal == "minimize" ? v < best_value : v > best_value)) best = &t, best_value = v;
  }
  std::printf("sweep done: %zu trials, %d not ok; results in %s\n", n, failed, (out / "results.csv").string().c_str());
  if (best) std::printf("best %s: %.4f, trial %s (%s)\n", spec.metric.c_str(), best_value, best->id.c_str(), describe(*best).c_str());
  return failed;
}

}  // namespace seqtrain::train
