// autlearn-runner: execute a TrainingProgram's calls on device, statically linked with the model (system-lib)
// and a minimal TVM runtime (Relax VM on CPU).
//
//   runner ARTIFACT_DIR [--warmup W] [--steps N] [--threads T]
//
// Reads ARTIFACT_DIR/manifest.json ("tensors": [{name, dtype, shape, offset, nbytes}], "tensors_file",
// "calls": [{phase, func, args, outs}], "hash") and the raw little-endian tensor bytes. Prints to stdout one
// metadata line, then one line per step (W warm-up + N timed), then an end line:
//   {"runner_version": "2", "abi": "...", "tvm": "...", "threads": T, "cpus": C, "warmup": W, "steps": N,
//    "clock": "CLOCK_MONOTONIC", "artifact_hash": "...", "tvm_bind_threads": null|"...",
//    "clock_pair": {"mono_ns": ns, "real_ns": ns, "gap_ns": ns}}
//   {"step": i, "warmup": bool, "phases_ns": {"<phase>": ns, ...}, "step_ns": ns, "t_start_ns": ns,
//    "t_end_ns": ns, "loss": float|null}
//   {"end": true, "clock_pair": {"mono_ns": ns, "real_ns": ns, "gap_ns": ns}}
// t_start_ns/t_end_ns are CLOCK_MONOTONIC at the step's start/end (step_ns = t_end_ns - t_start_ns). A clock pair
// maps CLOCK_MONOTONIC to CLOCK_REALTIME (e.g. to align with an external power trace): mono_ns is read immediately
// before real_ns; of 3 tries the one with the smallest gap_ns (CLOCK_MONOTONIC after minus before the
// CLOCK_REALTIME read, an upper bound on the pairing error) is printed.
// "loss" is null only when it is not finite. Exit codes: 0 ok, 2 bad artifact/input, 3 TVM error while running,
// 64 usage, 128+signal on a fatal signal (a message is written to stderr in every case; the end line is printed
// only on success).
#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <tvm/runtime/tensor.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#ifndef AUTLEARN_RUNNER_VERSION
#define AUTLEARN_RUNNER_VERSION "dev"
#endif
#ifndef AUTLEARN_ABI
#define AUTLEARN_ABI "unknown"
#endif
#ifndef AUTLEARN_TVM_VERSION
#define AUTLEARN_TVM_VERSION "unknown"
#endif

namespace tvm {
namespace runtime {
namespace threading {
int MaxConcurrency();  // threading_backend.h (not an installed header)
}  // namespace threading
}  // namespace runtime
}  // namespace tvm

namespace {

namespace ffi = tvm::ffi;

const char kUsage[] = "usage: runner ARTIFACT_DIR [--warmup W] [--steps N] [--threads T]\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct InputError : std::runtime_error {  // bad artifact: missing/corrupt file, shape or dtype mismatch
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string dir;
  long warmup = 1;
  long steps = 10;
  long threads = 0;  // 0: leave TVM_NUM_THREADS / the runtime default
};

long ParseCount(const char* flag, const char* text, long min) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < min || v > 1000000000L) {
    throw UsageError(std::string(flag) + " needs an integer >= " + std::to_string(min) + ", got '" + text + "'");
  }
  return v;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) throw UsageError(std::string(flag) + " needs a value");
      return argv[++i];
    };
    if (a == "--warmup") {
      o.warmup = ParseCount("--warmup", value("--warmup"), 0);
    } else if (a == "--steps") {
      o.steps = ParseCount("--steps", value("--steps"), 1);
    } else if (a == "--threads") {
      o.threads = ParseCount("--threads", value("--threads"), 1);
    } else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("unknown option " + a);
    } else if (o.dir.empty()) {
      o.dir = a;
    } else {
      throw UsageError("unexpected argument " + a);
    }
  }
  if (o.dir.empty()) throw UsageError("missing ARTIFACT_DIR");
  return o;
}

std::string ReadFile(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw InputError("cannot open " + path + ": " + std::strerror(errno));
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  bool bad = std::ferror(f);
  std::fclose(f);
  if (bad) throw InputError("cannot read " + path);
  return data;
}

// ---- typed access to the parsed manifest (every mismatch is an InputError naming the key) ----
using JObject = ffi::Map<ffi::Any, ffi::Any>;
using JArray = ffi::Array<ffi::Any>;

ffi::Any Field(const JObject& obj, const std::string& key, const std::string& where) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) throw InputError("manifest: " + where + " has no '" + key + "'");
  return (*it).second;  // by value: the iterator yields a temporary pair
}
template <typename T>
T As(const ffi::Any& v, const std::string& what) {
  auto r = v.try_cast<T>();
  if (!r.has_value()) throw InputError("manifest: " + what + " has the wrong type");
  return *r;
}
std::string Str(const JObject& o, const std::string& k, const std::string& where) {
  return std::string(As<ffi::String>(Field(o, k, where), where + "." + k));
}
int64_t Int(const JObject& o, const std::string& k, const std::string& where) {
  return As<int64_t>(Field(o, k, where), where + "." + k);
}
std::vector<std::string> StrList(const JObject& o, const std::string& k, const std::string& where) {
  std::vector<std::string> out;
  for (const ffi::Any& v : As<JArray>(Field(o, k, where), where + "." + k)) {
    out.push_back(std::string(As<ffi::String>(v, where + "." + k + "[]")));
  }
  return out;
}

struct CallPlan {
  int phase;
  std::string func;
  ffi::Function fn;
  std::vector<int> args, outs;
};

struct Program {
  std::vector<std::string> names;  // slot -> tensor name
  std::unordered_map<std::string, int> slot;
  std::vector<ffi::Any> state;  // slot -> current tensor (None until produced)
  std::vector<std::string> phases;
  std::vector<CallPlan> calls;
  int loss = -1;
  std::string hash;
};

int Slot(Program& p, const std::string& name) {
  auto it = p.slot.find(name);
  if (it != p.slot.end()) return it->second;
  int s = static_cast<int>(p.names.size());
  p.names.push_back(name);
  p.slot.emplace(name, s);
  p.state.emplace_back();
  return s;
}

uint64_t NumBytes(const std::vector<int64_t>& shape, DLDataType dt) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw InputError("negative dimension");
    n *= static_cast<uint64_t>(d);
  }
  return n * ((static_cast<uint64_t>(dt.bits) * dt.lanes + 7) / 8);
}

void LoadTensors(Program& p, const JObject& manifest, const std::string& dir) {
  std::string file = dir + "/" + Str(manifest, "tensors_file", "manifest");
  FILE* f = std::fopen(file.c_str(), "rb");
  if (!f) throw InputError("cannot open " + file + ": " + std::strerror(errno));
  struct Closer {
    FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  if (std::fseek(f, 0, SEEK_END) != 0) throw InputError("cannot seek " + file);
  const uint64_t size = static_cast<uint64_t>(std::ftell(f));
  for (const ffi::Any& item : As<JArray>(Field(manifest, "tensors", "manifest"), "tensors")) {
    JObject t = As<JObject>(item, "tensors[]");
    std::string name = Str(t, "name", "tensors[]");
    std::string where = "tensor '" + name + "'";
    DLDataType dt;
    try {
      dt = ffi::StringToDLDataType(ffi::String(Str(t, "dtype", where)));
    } catch (const ffi::Error&) {
      throw InputError(where + ": unknown dtype " + Str(t, "dtype", where));
    }
    std::vector<int64_t> shape;
    for (const ffi::Any& d : As<JArray>(Field(t, "shape", where), where + ".shape")) {
      shape.push_back(As<int64_t>(d, where + ".shape[]"));
    }
    int64_t offset = Int(t, "offset", where), nbytes = Int(t, "nbytes", where);
    if (offset < 0 || nbytes < 0 || static_cast<uint64_t>(nbytes) != NumBytes(shape, dt)) {
      throw InputError(where + ": nbytes " + std::to_string(nbytes) + " does not match its shape and dtype");
    }
    if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(nbytes) > size) {
      throw InputError(where + ": bytes [" + std::to_string(offset) + ", +" + std::to_string(nbytes) +
                       ") lie beyond the end of " + file + " (" + std::to_string(size) + " bytes)");
    }
    if (p.slot.count(name)) throw InputError(where + " is listed twice");
    int s = Slot(p, name);
    tvm::runtime::Tensor arr =
        tvm::runtime::Tensor::Empty(ffi::Shape(shape), dt, DLDevice{kDLCPU, 0});
    if (nbytes > 0) {
      if (std::fseek(f, static_cast<long>(offset), SEEK_SET) != 0 ||
          std::fread(arr->data, 1, static_cast<size_t>(nbytes), f) != static_cast<size_t>(nbytes)) {
        throw InputError(where + ": short read from " + file);
      }
    }
    p.state[s] = arr;
  }
}

void PlanCalls(Program& p, const JObject& manifest, ffi::Module& vm) {
  std::vector<bool> known(p.state.size(), true);
  JArray calls = As<JArray>(Field(manifest, "calls", "manifest"), "calls");
  if (calls.empty()) throw InputError("manifest: no calls");
  for (size_t i = 0; i < calls.size(); ++i) {
    std::string where = "call " + std::to_string(i);
    JObject c = As<JObject>(calls[i], where);
    CallPlan plan;
    std::string phase = Str(c, "phase", where);
    plan.func = Str(c, "func", where);
    where += " (" + plan.func + ")";
    auto ph = std::find(p.phases.begin(), p.phases.end(), phase);
    plan.phase = static_cast<int>(ph - p.phases.begin());
    if (ph == p.phases.end()) p.phases.push_back(phase);
    auto fn = vm->GetFunction(ffi::String(plan.func));
    if (!fn.has_value()) throw InputError(where + ": the compiled module has no function '" + plan.func + "'");
    plan.fn = *fn;
    for (const std::string& a : StrList(c, "args", where)) {
      auto it = p.slot.find(a);
      if (it == p.slot.end() || !known[it->second]) {
        throw InputError(where + ": argument '" + a + "' is neither a loaded tensor nor an earlier output");
      }
      plan.args.push_back(it->second);
    }
    for (const std::string& o : StrList(c, "outs", where)) {
      int s = Slot(p, o);
      known.resize(p.state.size(), false);
      known[s] = true;
      plan.outs.push_back(s);
    }
    p.calls.push_back(std::move(plan));
  }
  auto it = p.slot.find("loss");
  if (it == p.slot.end()) throw InputError("manifest: no tensor named 'loss' is loaded or produced");
  p.loss = it->second;
}

void Flatten(const ffi::Any& v, std::vector<ffi::Any>* out) {
  if (auto arr = v.try_cast<JArray>()) {
    for (const ffi::Any& x : *arr) Flatten(x, out);
  } else {
    out->push_back(v);
  }
}

int64_t ClockNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

int64_t NowNs() { return ClockNs(CLOCK_MONOTONIC); }

// {"mono_ns": ..., "real_ns": ..., "gap_ns": ...}: see the top of this file.
std::string ClockPairJson() {
  int64_t best_mono = 0, best_real = 0, best_gap = -1;
  for (int i = 0; i < 3; ++i) {
    const int64_t mono = ClockNs(CLOCK_MONOTONIC);
    const int64_t real = ClockNs(CLOCK_REALTIME);
    const int64_t gap = ClockNs(CLOCK_MONOTONIC) - mono;
    if (best_gap < 0 || gap < best_gap) {
      best_mono = mono;
      best_real = real;
      best_gap = gap;
    }
  }
  return "{\"mono_ns\": " + std::to_string(best_mono) + ", \"real_ns\": " + std::to_string(best_real) +
         ", \"gap_ns\": " + std::to_string(best_gap) + "}";
}

double ReadLoss(const ffi::Any& v) {
  auto t = v.try_cast<ffi::Tensor>();
  if (!t.has_value()) throw std::runtime_error("'loss' is not a tensor");
  const DLTensor* d = (*t).GetDLTensorPtr();
  if (d->device.device_type != kDLCPU) throw std::runtime_error("'loss' is not on the CPU");
  const char* base = static_cast<const char*>(d->data) + d->byte_offset;
  if (d->dtype.code == kDLFloat && d->dtype.bits == 32 && d->dtype.lanes == 1) {
    float x;
    std::memcpy(&x, base, sizeof(x));
    return x;
  }
  if (d->dtype.code == kDLFloat && d->dtype.bits == 64 && d->dtype.lanes == 1) {
    double x;
    std::memcpy(&x, base, sizeof(x));
    return x;
  }
  throw std::runtime_error("'loss' has unsupported dtype " + std::string(ffi::DLDataTypeToString(d->dtype)));
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

void RunSteps(Program& p, const Options& o) {
  std::vector<int64_t> phase_ns(p.phases.size());
  std::vector<ffi::AnyView> args;
  std::vector<ffi::Any> results;
  std::string line;
  for (long i = 0; i < o.warmup + o.steps; ++i) {
    std::fill(phase_ns.begin(), phase_ns.end(), 0);
    const int64_t t_step = NowNs();
    for (CallPlan& c : p.calls) {
      args.clear();
      for (int s : c.args) args.push_back(p.state[s]);
      ffi::Any rv;
      const int64_t t0 = NowNs();
      c.fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &rv);
      phase_ns[c.phase] += NowNs() - t0;
      results.clear();
      Flatten(rv, &results);
      if (results.size() != c.outs.size()) {
        throw std::runtime_error(c.func + " returned " + std::to_string(results.size()) + " values for " +
                                 std::to_string(c.outs.size()) + " outs");
      }
      for (size_t k = 0; k < c.outs.size(); ++k) p.state[c.outs[k]] = std::move(results[k]);
    }
    const int64_t t_end = NowNs();
    const double loss = ReadLoss(p.state[p.loss]);
    line = "{\"step\": " + std::to_string(i) + ", \"warmup\": " + (i < o.warmup ? "true" : "false") +
           ", \"phases_ns\": {";
    for (size_t k = 0; k < p.phases.size(); ++k) {
      line += (k ? ", " : "") + JsonString(p.phases[k]) + ": " + std::to_string(phase_ns[k]);
    }
    char buf[64];
    if (std::isfinite(loss)) {
      std::snprintf(buf, sizeof(buf), "%.9g", loss);
    } else {
      std::snprintf(buf, sizeof(buf), "null");
    }
    line += "}, \"step_ns\": " + std::to_string(t_end - t_step) + ", \"t_start_ns\": " + std::to_string(t_step) +
            ", \"t_end_ns\": " + std::to_string(t_end) + ", \"loss\": " + buf + "}\n";
    std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
  }
}

int Run(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  if (o.threads > 0) setenv("TVM_NUM_THREADS", std::to_string(o.threads).c_str(), 1);

  std::string text = ReadFile(o.dir + "/manifest.json");
  ffi::String err;
  ffi::Any parsed = ffi::json::Parse(ffi::String(text), &err);
  if (!err.empty()) throw InputError("manifest.json is not valid JSON: " + std::string(err));
  auto manifest_opt = parsed.try_cast<JObject>();
  if (!manifest_opt.has_value()) throw InputError("manifest.json is not a JSON object");
  JObject manifest = *manifest_opt;

  Program p;
  auto h = manifest.find(ffi::String("hash"));
  if (h != manifest.end()) {
    if (auto s = (*h).second.try_cast<ffi::String>()) p.hash = std::string(*s);
  }
  LoadTensors(p, manifest, o.dir);

  ffi::Module lib = ffi::Function::GetGlobalRequired("ffi.SystemLib")().cast<ffi::Module>();
  auto load = lib->GetFunction(ffi::String("vm_load_executable"));
  if (!load.has_value()) throw InputError("this runner has no compiled Relax VM executable linked in");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  constexpr int kPooled = 2;  // memory::AllocatorType::kPooled
  vm->GetFunction(ffi::String("vm_initialization")).value()(static_cast<int>(kDLCPU), 0, kPooled);
  PlanCalls(p, manifest, vm);

  const char* bind = getenv("TVM_BIND_THREADS");
  std::printf(
      "{\"runner_version\": \"%s\", \"abi\": \"%s\", \"tvm\": \"%s\", \"threads\": %d, \"cpus\": %u, "
      "\"warmup\": %ld, \"steps\": %ld, \"clock\": \"CLOCK_MONOTONIC\", \"artifact_hash\": %s, "
      "\"tvm_bind_threads\": %s, \"clock_pair\": %s}\n",
      AUTLEARN_RUNNER_VERSION, AUTLEARN_ABI, AUTLEARN_TVM_VERSION, tvm::runtime::threading::MaxConcurrency(),
      std::thread::hardware_concurrency(), o.warmup, o.steps, JsonString(p.hash).c_str(),
      bind ? JsonString(bind).c_str() : "null", ClockPairJson().c_str());
  std::fflush(stdout);
  RunSteps(p, o);
  std::printf("{\"end\": true, \"clock_pair\": %s}\n", ClockPairJson().c_str());
  std::fflush(stdout);
  return 0;
}

extern "C" void OnFatalSignal(int sig) {
  char msg[80];
  int n = std::snprintf(msg, sizeof(msg), "autlearn-runner: fatal signal %d (%s)\n", sig,
                        sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGFPE ? "SIGFPE"
                                                     : sig == SIGILL ? "SIGILL" : "SIGABRT");
  if (n > 0) (void)!write(2, msg, static_cast<size_t>(n));
  _exit(128 + sig);
}

}  // namespace

int main(int argc, char** argv) {
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, OnFatalSignal);
  try {
    return Run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "autlearn-runner: %s\n%s", e.what(), kUsage);
    return 64;
  } catch (const InputError& e) {
    std::fprintf(stderr, "autlearn-runner: error: %s\n", e.what());
    return 2;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "autlearn-runner: error: TVM %s: %s\n", e.kind().c_str(), e.message().c_str());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "autlearn-runner: error: %s\n", e.what());
    return 3;
  }
}
