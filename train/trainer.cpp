#include "train/trainer.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "data/synthetic_tasks.h"
#include "data/token_loader.h"
#include "train/checkpoint.h"
#include "train/schedule.h"
#include "train/sharded_checkpoint.h"
#ifdef SEQTRAIN_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace seqtrain::train {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// bf16 dense peak of an H100 SXM (the figure PyTorch's and llm.c's MFU use).
constexpr double kPeakFlops = 989e12;

// Rank 0 logs to the console and its file; the other ranks only to logs/rank-N.log, so the console
// shows one copy of each line.
std::shared_ptr<spdlog::logger> make_logger(const std::string& run_dir, int rank) {
  std::vector<spdlog::sink_ptr> sinks;
  if (rank == 0) sinks.push_back(std::make_shared<spdlog::sinks::stdout_color_sink_mt>());
  sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(run_dir + "/logs/rank-" + std::to_string(rank) + ".log"));
  auto logger = std::make_shared<spdlog::logger>("seqtrain", sinks.begin(), sinks.end());
  logger->set_pattern("[%H:%M:%S] %v");
  logger->flush_on(spdlog::level::info);
  return logger;
}

// One JSON object per line, flushed per line, so a crashed run keeps every line it printed.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path) : f_(std::fopen(path.c_str(), "a")) {
    ST_CHECK(f_, "cannot open metrics file '", path, "' for appending");
  }
  ~MetricsWriter() { std::fclose(f_); }
  void write(const std::string& line) {
    std::fprintf(f_, "%s\n", line.c_str());
    std::fflush(f_);
  }

 private:
  FILE* f_;
};

// The step (1-based) at which this rank must throw, from the test hook's environment variables
// (see trainer.h); -1 when the hook is off or aims at another rank.
int64_t test_fail_step(int rank) {
  const char* fail_rank = std::getenv("SEQTRAIN_TEST_FAIL_RANK");
  const char* fail_step = std::getenv("SEQTRAIN_TEST_FAIL_STEP");
  if (!fail_rank || !fail_step || std::atoi(fail_rank) != rank) return -1;
  return std::atoll(fail_step);
}

// Parameters of the whole model (not this rank's tensor-parallel shards).
int64_t global_parameter_count(const std::vector<NamedParameter>& params) {
  int64_t n = 0;
  for (const NamedParameter& np : params) {
    int64_t numel = 1;
    for (int64_t d : np.param->global_shape) numel *= d;
    n += numel;
  }
  return n;
}

std::string fmt_duration(double seconds) {
  int64_t s = int64_t(seconds);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60), (long long)(s % 60));
  return buf;
}

// Validation loss and exact-match accuracy over the answers (targets >= 0) of eval_steps
// micro-batches of task samples at one length.
struct TaskEval {
  double loss = 0;     // mean cross-entropy over the answers
  double acc = 0;      // fraction of answers whose argmax is the target
  double seq_acc = 0;  // fraction of samples with every answer right
};

// The micro-batches are dealt round-robin over the dp ranks and the sums reduced over them. Only the
// answer rows of the logits are gathered (by the embedding op, as a row lookup), so neither the loss
// nor the argmax runs over the whole [B, T, V] logits.
TaskEval evaluate_task(LanguageModel& model, const data::TaskGenerator& task, int64_t seq_len, const TrainingConfig& tc,
                       int dp_rank, int dp, DType compute, Device device, distributed::Communicator& host_dp) {
  NoGradGuard no_grad;
  double loss = 0, correct = 0, seq_correct = 0;
  for (int64_t i = dp_rank; i < tc.eval_steps; i += dp) {
    data::Batch b = task.get_eval_batch(i * tc.micro_batch, tc.micro_batch, seq_len);
    const std::vector<int64_t> targets = b.targets.to_ints();
    std::vector<int64_t> rows, answers;
    for (size_t r = 0; r < targets.size(); ++r)
      if (targets[r] >= 0) rows.push_back(int64_t(r)), answers.push_back(targets[r]);
    const int64_t n = int64_t(rows.size());
    Tensor logits = model.forward(b.inputs.to(device), compute);
    logits = logits.view({logits.numel() / model.padded_vocab(), model.padded_vocab()});  // (B*T, V)
    Tensor answer_logits = ops::embedding(Tensor::from_ints(rows, {n}, DType::I32, device), logits);  // (n, V)
    Tensor answer_targets = Tensor::from_ints(answers, {n}, DType::I32, device);
    loss += ops::sum_all(ops::cross_entropy(answer_logits, answer_targets).losses).item();
    Tensor argmax;
    ops::reduce(ops::ReduceOp::Max, answer_logits, 1, false, &argmax);
    const std::vector<int64_t> predicted = argmax.to_ints();
    std::vector<bool> sample_right(static_cast<size_t>(tc.micro_batch), true);
    for (int64_t j = 0; j < n; ++j) {
      const bool right = predicted[size_t(j)] == answers[size_t(j)];
      correct += right;
      if (!right) sample_right[size_t(rows[size_t(j)] / seq_len)] = false;
    }
    for (bool right : sample_right) seq_correct += right;
  }
  Tensor sums = Tensor::from_vector({loss, correct, seq_correct}, {3}, DType::F64);
  host_dp.all_reduce(sums, distributed::Reduction::Sum);
  const std::vector<double> total = sums.to_vector();
  const double samples = double(tc.eval_steps * tc.micro_batch), answers = samples * double(task.answers_per_sample());
  return {total[0] / answers, total[1] / answers, total[2] / samples};
}

}  // namespace

Device resolve_device(const std::string& name) {
  if (name == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  Device d = parse_device(name);
  ST_CHECK(!d.is_cuda() || d.index < cuda_device_count(), "run.device: ", name, " requested but ",
           cuda_device_count(), " CUDA device(s) are available");
  return d;
}

DType compute_dtype(const Config& cfg, Device device) {
  return device.is_cuda() && cfg.training.precision == "bf16" ? DType::BF16 : DType::F32;
}

double memory_in_use_gib(Device device) {
#ifdef SEQTRAIN_WITH_CUDA
  if (device.is_cuda()) return double(cuda::pool_reserved_bytes(device.index)) / double(1ull << 30);
#endif
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return double(resident) * 4096.0 / double(1ull << 30);
}

int64_t micro_batches_per_rank(const TrainingConfig& tc, int dp) {
  const int64_t tokens_per_round = tc.micro_batch * tc.seq_len * dp;
  ST_CHECK(tc.batch_tokens % tokens_per_round == 0, "training.batch_tokens ", tc.batch_tokens,
           " is not a multiple of micro_batch * seq_len * dp = ", tc.micro_batch, " * ", tc.seq_len, " * ", dp, " = ",
           tokens_per_round, " (micro_batch is per rank, batch_tokens global; dp = ", dp,
           " from the world size); change training.batch_tokens or training.micro_batch, or launch a number of "
           "processes that divides the micro-batches evenly");
  return tc.batch_tokens / tokens_per_round;
}

TrainState::TrainState(const Config& cfg, Device device, distributed::Communicator* dp,
                       distributed::Communicator* tp)
    : cfg_(cfg), device_(device), compute_(compute_dtype(cfg, device)), dp_(dp), tp_(tp) {
  model_ = std::make_unique<LanguageModel>(cfg.model, distributed::TensorParallel{tp});
  model_->init_parameters(cfg.run.seed);
  model_->to(device);
  params_ = model_->named_parameters();
  optimizer_ = std::make_unique<AdamW>(params_, cfg.optimizer.betas[0], cfg.optimizer.betas[1], cfg.optimizer.eps,
                                       cfg.optimizer.weight_decay, cfg.parallel.zero == 1 ? dp_ : nullptr);
  if (dp_ && dp_->size() > 1)
    reducer_ = std::make_unique<distributed::GradReducer>(params_, *dp_,
                                                          size_t(cfg.parallel.bucket_mb * double(1 << 20)));
}

void TrainState::backward_micro(const Tensor& ids, const Tensor& targets, double scale_by, bool last,
                                Tensor& loss_sum) {
  // The model's loss is a mean over all B*T positions, ignored targets (-1) counting as 0; a task
  // labels its answers only, so the loss is rescaled to the mean over the labeled positions.
  int64_t labeled = 0;
  for (int64_t t : targets.to_ints()) labeled += t >= 0;
  ST_CHECK(labeled > 0, "training batch ", targets.desc(), ": every target is ignored (-1); expected some labels");
  scale_by *= double(targets.numel()) / double(labeled);
  Tensor loss = model_->loss(ids.to(device_), targets.to(device_), compute_, cfg_.training.recompute);
  // The last micro-batch's backward launches each dp bucket's all-reduce as soon as its gradients
  // are final (earlier ones only accumulate). Not with recompute: parameters inside a recomputed
  // block get their gradients from a nested backward the hook cannot see; those reduce afterwards.
  std::optional<autograd::LeafReadyGuard> overlap;
  if (last && reducer_ && !cfg_.training.recompute) overlap.emplace(reducer_->hook());
  scale(loss, scale_by).backward();
  Tensor detached = ops::scale(loss.detach(), scale_by);
  loss_sum = loss_sum.defined() ? ops::add(loss_sum, detached) : detached;
}

double TrainState::reduce_over_dp(const Tensor& loss_sum) {
  if (!reducer_) return loss_sum.item();
  reducer_->reduce();
  Tensor loss = loss_sum.to(DType::F64).contiguous().view({1});
  dp_->all_reduce(loss, distributed::Reduction::Sum);
  return loss.item();
}

TrainState::StepStats TrainState::apply_gradients(int64_t step_index, double loss) {
  const OptimizerConfig& o = cfg_.optimizer;
  const ScheduleConfig& s = cfg_.schedule;
  // After the dp reduction every rank of a tp group holds the same full gradient of its shards and
  // of the replicated parameters: the norm sums the shards over tp and counts replicated parameters
  // once, so every rank clips identically.
  double grad_norm = clip_grad_norm(params_, o.grad_clip, tp_);
  ST_CHECK(std::isfinite(loss), "step ", step_index + 1, ": the training loss is ", loss,
           "; lower optimizer.lr or check the data");
  ST_CHECK(std::isfinite(grad_norm), "step ", step_index + 1, ": the gradient norm is ", grad_norm,
           " (loss ", loss, "); lower optimizer.lr or enable gradient clipping");
  double lr = learning_rate(step_index, cfg_.training.steps, o.lr, s.warmup_steps, s.decay, s.min_lr_ratio);
  {
    NoGradGuard no_grad;
    optimizer_->step(lr, step_index + 1);
  }
  model_->zero_grad();
  return {loss, grad_norm, lr};
}

TrainResult train(const Config& cfg, const distributed::World& world, const distributed::Mesh& mesh) {
  // Everything that can reject the inputs (layout, device, data files, model, the checkpoint to
  // resume) runs before anything is written to the run folder, so a bad invocation changes nothing.
  ST_CHECK(mesh.cp() == 1, "parallel: cp=", mesh.cp(),
           ": context parallelism is not implemented yet; use parallel.cp: 1");
  const std::string run_dir = cfg.run.dir;
  const Device device = world.bind_device(resolve_device(cfg.run.device));
  const TrainingConfig& tc = cfg.training;
  const int dp = mesh.dp(), dp_rank = mesh.dp_group().rank;
  const bool writer = world.rank() == 0;  // writes console, metrics, config.yaml and checkpoints
  const int64_t micro_batches = micro_batches_per_rank(tc, dp);
  const int64_t samples_per_step = micro_batches * dp * tc.micro_batch;
  const int64_t fail_at_step = test_fail_step(world.rank());
  auto dp_comm = distributed::make_communicator(mesh.dp_group(), device);
  auto tp_comm = distributed::make_communicator(mesh.tp_group(), device);
  // Host-side agreement (stop flag, evaluation sums) over MPI whatever the device.
  auto host_world = distributed::make_mpi_communicator(mesh.world());
  auto host_dp = distributed::make_mpi_communicator(mesh.dp_group());

  // The samples come from the token shards or, with data.task, from the task generator.
  std::optional<data::TokenLoader> train_data, val_data;
  std::optional<data::TaskGenerator> task;
  if (cfg.data.task.enabled()) {
    task.emplace(cfg.data.task, cfg.run.seed);
  } else {
    train_data.emplace(cfg.data.train, tc.seq_len, cfg.model.vocab_size, cfg.run.seed);
    if (!cfg.data.val.empty() && tc.eval_every > 0) val_data.emplace(cfg.data.val, tc.seq_len, cfg.model.vocab_size, cfg.run.seed);
  }
  auto train_batch = [&](int64_t first_sample, int64_t count) {
    return task ? task->get_batch(first_sample, count, tc.seq_len) : train_data->get_batch(first_sample, count);
  };
  const bool evaluates = tc.eval_every > 0 && (task || val_data);

  TrainState state(cfg, device, dp_comm.get(), tp_comm.get());
  LanguageModel& model = state.model();
  const double flops_per_token = model.flops_per_token(tc.seq_len);

  CheckpointMeta meta;
  meta.seed = cfg.run.seed;
  meta.layers = cfg.model.layers_code();
  meta.config_yaml = to_yaml(cfg);
  meta.mesh = mesh.str();
  const std::string ckpt_dir = run_dir + "/checkpoints";
  std::optional<std::string> resume_from;
  if (cfg.checkpoint.resume == "auto") resume_from = find_latest_checkpoint(ckpt_dir);
  else if (cfg.checkpoint.resume != "none") resume_from = cfg.checkpoint.resume;
  if (resume_from) {
    CheckpointMeta saved = read_checkpoint_meta(*resume_from);
    load_sharded_checkpoint(*resume_from, state.params(), state.optimizer());
    meta.step = saved.step;
    meta.tokens_seen = saved.tokens_seen;
    meta.data_position = saved.data_position;
  }

  fs::create_directories(run_dir + "/logs");
  if (writer) {
    fs::create_directories(ckpt_dir);
    std::ofstream resolved(run_dir + "/config.yaml");
    resolved << to_yaml(cfg);
  }
  auto log = make_logger(run_dir, world.rank());
  log->info("run {}: {} on {} ({}), {} layers {}, {:.2f}M parameters, {} micro-batches of {}x{} per step{}",
            cfg.run.name, cfg.source, device.str(), dtype_name(state.compute()), model.layer_types().size(),
            cfg.model.layers_code(), double(global_parameter_count(state.params())) / 1e6, micro_batches, tc.micro_batch,
            tc.seq_len,
            world.size() > 1 ? str_cat(" on each of ", dp, " data-parallel ranks (", mesh.str(), ", rank ", world.rank(), ")")
                             : std::string());
  if (resume_from) log->info("resumed from {} at step {} ({} tokens seen)", *resume_from, meta.step, meta.tokens_seen);

  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  std::optional<MetricsWriter> metrics;
  if (writer) metrics.emplace(run_dir + "/metrics.jsonl");

  auto save = [&](double lr) {
    // Collective over tp (every rank gathers its group's shards) and, with ZeRO-1, over dp; rank 0
    // writes.
    std::vector<NamedTensor> params = global_parameters(state.params(), tp_comm.get());
    std::vector<OptimizerSlot> slots = global_optimizer_slots(state.optimizer(), tp_comm.get());
    if (!writer) return;
    meta.lr = lr;
    std::string path = save_checkpoint(ckpt_dir, meta, params, slots, cfg.checkpoint.keep);
    log->info("checkpoint {}", path);
  };

  // Evaluation batches are dealt round-robin over the dp ranks and the losses summed.
  auto evaluate = [&](int64_t step) {
    NoGradGuard no_grad;
    double local = 0;
    for (int64_t i = dp_rank; i < tc.eval_steps; i += dp) {
      data::Batch b = val_data->get_eval_batch(i * tc.micro_batch, tc.micro_batch);
      local += model.loss(b.inputs.to(device), b.targets.to(device), state.compute()).item();
    }
    Tensor total = Tensor::full({1}, local, DType::F64);
    host_dp->all_reduce(total, distributed::Reduction::Sum);
    double loss = total.item() / double(tc.eval_steps);
    double bpb = loss / std::log(2.0);  // byte-level tokens: one token is one byte
    log->info("eval step {:6d} | val loss {:.4f} | {:.4f} bits per byte", step, loss, bpb);
    char line[256];
    std::snprintf(line, sizeof line, "{\"kind\": \"eval\", \"step\": %lld, \"loss\": %.9g, \"bpb\": %.9g}",
                  (long long)step, loss, bpb);
    if (metrics) metrics->write(line);
    return bpb;
  };

  // Task evaluation: at training.seq_len, then at each of data.task.eval_lengths ("acc@1024").
  auto evaluate_tasks = [&](int64_t step) {
    std::string json = str_cat("{\"kind\": \"eval\", \"step\": ", step), console;
    double acc = 0;
    std::vector<int64_t> lengths = {tc.seq_len};
    lengths.insert(lengths.end(), cfg.data.task.eval_lengths.begin(), cfg.data.task.eval_lengths.end());
    for (int64_t length : lengths) {
      TaskEval e = evaluate_task(model, *task, length, tc, dp_rank, dp, state.compute(), device, *host_dp);
      const std::string at = length == tc.seq_len ? "" : str_cat("@", length);
      char text[256];
      std::snprintf(text, sizeof text, ", \"loss%s\": %.9g, \"acc%s\": %.9g, \"seq_acc%s\": %.9g", at.c_str(), e.loss,
                    at.c_str(), e.acc, at.c_str(), e.seq_acc);
      json += text;
      std::snprintf(text, sizeof text, " | %sloss %.4f acc %.2f%% seq %.2f%%", at.empty() ? "" : (at.substr(1) + ": ").c_str(),
                    e.loss, 100 * e.acc, 100 * e.seq_acc);
      console += text;
      if (at.empty()) acc = e.acc;
    }
    log->info("eval step {:6d}{}", step, console);
    if (metrics) metrics->write(json + "}");
    return acc;
  };

  TrainResult result;
  result.step = meta.step;
  const int64_t first_step = meta.step;
  auto t_start = std::chrono::steady_clock::now();
  auto t_window = t_start;
  int64_t steps_in_window = 0;
  double lr = 0;
  for (int64_t step = meta.step; step < tc.steps; ++step) {
    ST_CHECK(step + 1 != fail_at_step, "test hook SEQTRAIN_TEST_FAIL_STEP: rank ", world.rank(), " fails at step ",
             step + 1);
    // This rank's slice of the global batch: micro-batches dp_rank * micro_batches onwards.
    int64_t position = meta.data_position + dp_rank * micro_batches * tc.micro_batch;
    auto stats = state.step(step, micro_batches, [&] {
      data::Batch b = train_batch(position, tc.micro_batch);
      position += tc.micro_batch;
      return std::make_pair(b.inputs, b.targets);
    });
    meta.data_position += samples_per_step;
    lr = stats.lr;
    meta.step = step + 1;
    meta.tokens_seen += tc.batch_tokens;
    result.step = meta.step;
    result.last_loss = stats.loss;
    ++steps_in_window;

    char line[512];
    const bool log_now = meta.step % std::max<int64_t>(cfg.logging.every, 1) == 0 || meta.step == tc.steps;
    auto now = std::chrono::steady_clock::now();
    double window_s = std::chrono::duration<double>(now - t_window).count();
    double ms_per_step = 1e3 * window_s / double(steps_in_window);
    double tokens_per_s = double(tc.batch_tokens) / (ms_per_step / 1e3);
    // MFU only where the peak means something (the GPU); mem_gib: the GPU pool's reserved bytes or
    // the process's resident set.
    const double mfu = device.is_cuda() ? 100.0 * flops_per_token * tokens_per_s / kPeakFlops : 0.0;
    const double mem_gib = memory_in_use_gib(device);
    char mfu_field[40] = "";
    if (device.is_cuda()) std::snprintf(mfu_field, sizeof mfu_field, "\"mfu\": %.3f, ", mfu);
    std::snprintf(line, sizeof line,
                  "{\"kind\": \"train\", \"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, "
                  "\"tokens_per_s\": %.1f, \"ms_per_step\": %.3f, %s\"mem_gib\": %.4f, \"tokens_seen\": %lld}",
                  (long long)meta.step, stats.loss, stats.lr, stats.grad_norm, tokens_per_s, ms_per_step, mfu_field,
                  mem_gib, (long long)meta.tokens_seen);
    if (metrics) metrics->write(line);
    if (log_now) {
      double elapsed = std::chrono::duration<double>(now - t_start).count();
      double eta = elapsed / double(meta.step - first_step) * double(tc.steps - meta.step);
      log->info("step {:6d}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.1f} ms/step | {:.0f} tok/s | "
                "MFU {:.1f}% | mem {:.2f} GiB | ETA {}",
                meta.step, tc.steps, stats.loss, stats.lr, stats.grad_norm, ms_per_step, tokens_per_s, mfu,
                mem_gib, fmt_duration(eta));
      t_window = now;
      steps_in_window = 0;
    }
    if (evaluates && (meta.step % tc.eval_every == 0 || meta.step == tc.steps)) {
      if (task) result.last_val_acc = evaluate_tasks(meta.step);
      else result.last_val_bpb = evaluate(meta.step);
    }
    // A signal may reach some ranks only: they agree (any rank stopping stops all) so that all of
    // them leave the loop after the same step.
    Tensor stop_flag = Tensor::full({1}, g_stop_signal != 0 ? 1.0 : 0.0, DType::I64);
    if (world.size() > 1) host_world->all_reduce(stop_flag, distributed::Reduction::Max);
    const bool stop = stop_flag.item() != 0;
    if (stop || meta.step == tc.steps || (cfg.checkpoint.every > 0 && meta.step % cfg.checkpoint.every == 0)) save(lr);
    if (stop) {
      log->info("stopped by signal {} after step {}; resume with the same command", int(g_stop_signal), meta.step);
      result.interrupted = true;
      break;
    }
  }
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
  return result;
}

}  // namespace seqtrain::train
