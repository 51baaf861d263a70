// millrace._millrace: the C++ engine as a Python extension module. The Python package
// (python/millrace/__init__.py) builds its Pipeline on the one class here, Run, which is one
// millrace::Pipeline run; batches cross to Python without a copy.
//
// Lifetime: a Run is shared (std::shared_ptr) by its Python object and by every Batch it handed
// out, and each NumPy array a Batch gives keeps that Batch alive through the array's base
// object. So the pooled buffer under an array goes back to the engine only when the last Python
// reference to the batch and its arrays is gone, and the engine (its buffers and threads) only
// when the last batch is. cancel() stops the run's threads at once, whatever is still held.
//
// The GIL is released whenever the engine may take time (building, waiting for a batch,
// cancelling, destroying); the engine never calls into Python. While it waits for a batch the
// module checks for signals every few milliseconds, so Ctrl-C raises KeyboardInterrupt promptly
// and cancels the run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "millrace/distributed.hpp"
#include "millrace/millrace.hpp"

namespace py = pybind11;

namespace {

// How long one wait for a batch lasts before the module looks for signals again.
constexpr auto kSignalCheck = std::chrono::milliseconds(20);

py::object config_error_type;
py::object run_error_type;

struct RunHolder {
  explicit RunHolder(millrace::Pipeline p) : pipeline(std::move(p)) {}
  ~RunHolder() {
    // Joins the run's threads: they never need the GIL, so let other Python threads go on.
    py::gil_scoped_release release;
    pipeline.cancel();
    std::optional<millrace::Pipeline> drop(std::move(pipeline));
  }
  RunHolder(const RunHolder&) = delete;
  RunHolder& operator=(const RunHolder&) = delete;

  millrace::Pipeline pipeline;
  std::atomic<int> held{0};  // batches alive in Python
};

class PyBatch {
 public:
  PyBatch(std::shared_ptr<RunHolder> run, millrace::Batch batch)
      : run_(std::move(run)), batch_(std::move(batch)) {
    run_->held.fetch_add(1);
  }
  ~PyBatch() {
    // Returns the buffer to the pool (a lock-free push) before the run may go.
    { millrace::Batch drop(std::move(batch_)); }
    run_->held.fetch_sub(1);
  }
  PyBatch(const PyBatch&) = delete;
  PyBatch& operator=(const PyBatch&) = delete;

  const millrace::Batch& batch() const { return batch_; }

 private:
  std::shared_ptr<RunHolder> run_;
  millrace::Batch batch_;
};

py::dtype numpy_dtype(millrace::DType t) {
  switch (t) {
    case millrace::DType::kUInt8:
      return py::dtype::of<std::uint8_t>();
    case millrace::DType::kInt8:
      return py::dtype::of<std::int8_t>();
    case millrace::DType::kFloat32:
      return py::dtype::of<float>();
  }
  throw std::logic_error("millrace: unknown dtype");
}

// Row-major strides for `shape` with elements of `element` bytes. Given explicitly: pybind11
// 2.10 derives default strides from the dtype's item size, read at its NumPy 1 place in the
// descriptor, which is 0 under NumPy 2 (every element would alias the first).
std::vector<py::ssize_t> strides_of(const std::vector<py::ssize_t>& shape, py::ssize_t element) {
  std::vector<py::ssize_t> strides(shape.size());
  py::ssize_t step = element;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = step;
    step *= shape[i];
  }
  return strides;
}

// A writable view of `count` values at `data` in the shape `shape`, owned by the batch `owner`.
// The batch has passed every stage when Python sees it, so nothing in the engine reads these
// bytes again: writing to them only changes what Python sees.
template <class T>
py::array view(const py::handle& owner, const T* data, std::vector<py::ssize_t> shape) {
  std::vector<py::ssize_t> strides = strides_of(shape, sizeof(T));
  return py::array(py::dtype::of<T>(), std::move(shape), std::move(strides), const_cast<T*>(data),
                   owner);
}

py::array batch_data(const py::object& self) {
  const millrace::Batch& b = self.cast<const PyBatch&>().batch();
  std::vector<py::ssize_t> shape(b.shape().begin(), b.shape().end());
  std::vector<py::ssize_t> strides =
      strides_of(shape, static_cast<py::ssize_t>(millrace::dtype_size(b.dtype())));
  return py::array(numpy_dtype(b.dtype()), shape, strides, const_cast<void*>(b.data()), self);
}

py::array batch_labels(const py::object& self) {
  const millrace::Batch& b = self.cast<const PyBatch&>().batch();
  const auto rows = static_cast<py::ssize_t>(b.size());
  if (b.label_width() == 1) return view(self, b.labels().data(), {rows});
  return view(self, b.labels().data(), {rows, static_cast<py::ssize_t>(b.label_width())});
}

py::array batch_ids(const py::object& self) {
  const millrace::Batch& b = self.cast<const PyBatch&>().batch();
  // int64, as torch and NumPy index with (torch.from_numpy refuses uint64): ids are dataset
  // positions and record keys, far below 2^63, so the same bytes read as int64 are the same ids.
  return view(self, reinterpret_cast<const std::int64_t*>(b.ids().data()),
              {static_cast<py::ssize_t>(b.size())});
}

py::object batch_outputs(const py::object& self) {
  const millrace::Batch& b = self.cast<const PyBatch&>().batch();
  if (b.output_width() == 0) return py::none();
  return view(self, b.outputs().data(),
              {static_cast<py::ssize_t>(b.size()), static_cast<py::ssize_t>(b.output_width())});
}

py::dict batch_quantization(const PyBatch& self) {
  const millrace::Quantization& q = self.batch().quantization();
  py::dict d;
  d["unit"] = q.unit;
  d["zero_point"] = q.zero_point;
  d["mxnet_compatible"] = q.mxnet_compatible;
  return d;
}

py::dict position_dict(const millrace::StreamPosition& p) {
  py::dict d;
  d["epoch"] = p.epoch;
  d["samples"] = p.samples;
  d["batches"] = p.batches;
  d["first_batch_samples"] = p.first_batch_samples;
  return d;
}

class PyRun {
 public:
  static PyRun from_file(const std::string& path, const std::vector<std::string>& overrides) {
    std::optional<millrace::Pipeline> p;
    {
      py::gil_scoped_release release;
      p.emplace(millrace::Pipeline::from_file(path, overrides));
    }
    return PyRun(std::move(*p));
  }
  static PyRun from_string(const std::string& yaml, const std::string& source_name,
                           const std::vector<std::string>& overrides) {
    std::optional<millrace::Pipeline> p;
    {
      py::gil_scoped_release release;
      p.emplace(millrace::Pipeline::from_string(yaml, source_name, overrides));
    }
    return PyRun(std::move(*p));
  }

  void start_at(std::uint32_t epoch, std::uint64_t samples, std::uint64_t batches,
                std::uint64_t first_batch_samples, std::uint32_t epochs,
                std::uint64_t global_start) {
    run_->pipeline.start_at({epoch, samples, batches, first_batch_samples}, epochs, global_start);
  }

  py::dict identity() const {
    const millrace::StreamIdentity id = run_->pipeline.identity();
    py::dict d;
    d["seed"] = id.seed;
    d["config"] = id.config;
    d["batch_size"] = id.batch_size;
    d["dataset"] = id.dataset;
    d["dataset_samples"] = id.dataset_samples;
    d["part_index"] = id.part_index;
    d["num_parts"] = id.num_parts;
    d["global"] = id.global;
    return d;
  }

  // The next batch, or None at the end of the run.
  py::object next() {
    millrace::Pipeline& p = run_->pipeline;
    for (;;) {
      bool ready = false;
      {
        py::gil_scoped_release release;
        ready = p.wait_for(kSignalCheck);
      }
      if (PyErr_CheckSignals() != 0) {
        // KeyboardInterrupt (or whatever a handler raised): the run stops now.
        py::error_already_set raised;  // takes the pending exception, under the GIL
        {
          py::gil_scoped_release release;
          p.cancel();
        }
        throw raised;
      }
      if (ready) break;
      const int held = run_->held.load();
      if (held >= p.prefetch()) {
        // Every buffer the run may hand out is held by Python: it can make no more.
        throw std::runtime_error(
            "millrace: all " + std::to_string(held) +
            " batch buffers are held by Python references (pipeline.prefetch = " +
            std::to_string(p.prefetch()) +
            "); drop a batch (and its arrays) before asking for the next one, copy what you "
            "keep (numpy.array(batch.data)), or raise pipeline.prefetch");
      }
    }
    std::optional<millrace::Batch> b;
    {
      py::gil_scoped_release release;
      b = p.next();
    }
    if (!b) return py::none();
    return py::cast(std::make_unique<PyBatch>(run_, std::move(*b)));
  }

  void cancel() {
    py::gil_scoped_release release;
    run_->pipeline.cancel();
  }

  std::string stats_json() const {
    millrace::RunStats s;
    {
      py::gil_scoped_release release;
      s = run_->pipeline.stats();
    }
    return millrace::summary_json(run_->pipeline.name(), s);
  }

  std::string summary() const {
    return millrace::format_summary(run_->pipeline.name(), run_->pipeline.stats());
  }

  std::optional<std::uint64_t> batches_per_epoch() const {
    return run_->pipeline.batches_per_epoch();
  }
  int prefetch() const { return run_->pipeline.prefetch(); }
  int held() const { return run_->held.load(); }
  std::string name() const { return run_->pipeline.name(); }
  std::string graph_dot() const { return run_->pipeline.graph_dot(); }
  std::vector<std::string> warnings() const {
    std::vector<std::string> out;
    for (const auto& d : run_->pipeline.warnings()) out.push_back(d.to_string());
    return out;
  }

 private:
  explicit PyRun(millrace::Pipeline p) : run_(std::make_shared<RunHolder>(std::move(p))) {}
  std::shared_ptr<RunHolder> run_;
};

}  // namespace

PYBIND11_MODULE(_millrace, m) {
  m.doc() = "millrace's C++ engine; use the millrace package, not this module";

  m.attr("__version__") = MILLRACE_VERSION;

  py::class_<millrace::Diagnostic>(m, "Diagnostic")
      .def(
          py::init([](std::string file, int line, int column, std::string message, bool warning) {
            return millrace::Diagnostic{std::move(file), line, column, std::move(message), warning};
          }),
          py::arg("file"), py::arg("line"), py::arg("column"), py::arg("message"),
          py::arg("warning") = false)
      .def_readonly("file", &millrace::Diagnostic::file)
      .def_readonly("line", &millrace::Diagnostic::line)
      .def_readonly("column", &millrace::Diagnostic::column)
      .def_readonly("message", &millrace::Diagnostic::message)
      .def_readonly("warning", &millrace::Diagnostic::warning)
      .def("__str__", &millrace::Diagnostic::to_string)
      .def("__repr__", [](const millrace::Diagnostic& d) {
        return "<millrace.Diagnostic " + d.to_string() + ">";
      });

  config_error_type = py::reinterpret_steal<py::object>(PyErr_NewExceptionWithDoc(
      "millrace.ConfigError",
      "A configuration with problems; .diagnostics lists every one (file, line, column, message).",
      PyExc_ValueError, nullptr));
  run_error_type = py::reinterpret_steal<py::object>(PyErr_NewExceptionWithDoc(
      "millrace.RunError", "A run that failed: the stage, its place in the config and the sample.",
      PyExc_RuntimeError, nullptr));
  m.attr("ConfigError") = config_error_type;
  m.attr("RunError") = run_error_type;
  // pybind11 takes a plain function pointer whose parameter is a std::exception_ptr by value.
  // NOLINTNEXTLINE(performance-unnecessary-value-param)
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const millrace::ConfigError& error) {
      py::object exc = config_error_type(error.what());
      exc.attr("diagnostics") = py::cast(error.diagnostics());
      PyErr_SetObject(config_error_type.ptr(), exc.ptr());
    } catch (const millrace::RunError& error) {
      PyErr_SetString(run_error_type.ptr(), error.what());
    }
  });

  py::class_<PyBatch>(m, "Batch")
      .def_property_readonly("data", &batch_data)
      .def_property_readonly("labels", &batch_labels)
      .def_property_readonly("ids", &batch_ids)
      .def_property_readonly("outputs", &batch_outputs)
      .def_property_readonly("pad", [](const PyBatch& b) { return b.batch().pad(); })
      .def_property_readonly("epoch", [](const PyBatch& b) { return b.batch().epoch(); })
      .def_property_readonly(
          "index", [](const PyBatch& b) { return b.batch().position().batches - 1; },
          "the batch's number within its epoch, from 0")
      .def_property_readonly("layout",
                             [](const PyBatch& b) { return std::string(b.batch().layout()); })
      .def_property_readonly("paths", [](const PyBatch& b) { return b.batch().paths(); })
      .def_property_readonly("quantization", &batch_quantization)
      .def_property_readonly("last_in_epoch",
                             [](const PyBatch& b) { return b.batch().last_in_epoch(); })
      .def_property_readonly("position",
                             [](const PyBatch& b) { return position_dict(b.batch().position()); })
      .def("__len__", [](const PyBatch& b) { return b.batch().size(); })
      .def("__repr__", [](const PyBatch& b) {
        std::string shape;
        for (const std::int64_t d : b.batch().shape()) {
          shape += (shape.empty() ? "" : ", ") + std::to_string(d);
        }
        return "<millrace.Batch epoch " + std::to_string(b.batch().epoch()) + " #" +
               std::to_string(b.batch().position().batches - 1) + " " +
               std::string(millrace::dtype_name(b.batch().dtype())) + " [" + shape + "] " +
               std::string(b.batch().layout()) + ", pad " + std::to_string(b.batch().pad()) + ">";
      });

  m.def(
      "validate",
      [](const std::string& path, const std::vector<std::string>& overrides) {
        py::gil_scoped_release release;
        return millrace::validate_file(path, overrides);
      },
      py::arg("path"), py::arg("overrides"));
  m.def(
      "validate_string",
      [](const std::string& yaml, const std::string& source_name,
         const std::vector<std::string>& overrides) {
        py::gil_scoped_release release;
        return millrace::validate_string(yaml, source_name, overrides);
      },
      py::arg("yaml"), py::arg("source_name"), py::arg("overrides"));
  m.def("set_process_group", &millrace::set_process_group, py::arg("rank"), py::arg("world"),
        "the rank and world size that pipelines built from now on split their data set by, "
        "unless their config sets num_parts / part_index (ignored under MPI)");
  m.def("process_group", [] {
    const millrace::ProcessGroup& g = millrace::process_group();
    return py::make_tuple(g.rank, g.world, g.mpi);
  });
  m.def("stage_reference", &millrace::stage_reference, py::arg("markdown"));

  py::class_<PyRun>(m, "Run")
      .def_static("from_file", &PyRun::from_file, py::arg("path"), py::arg("overrides"))
      .def_static("from_string", &PyRun::from_string, py::arg("yaml"), py::arg("source_name"),
                  py::arg("overrides"))
      .def("start_at", &PyRun::start_at, py::arg("epoch"), py::arg("samples"), py::arg("batches"),
           py::arg("first_batch_samples"), py::arg("epochs"), py::arg("global_start") = 0)
      .def("identity", &PyRun::identity)
      .def("next", &PyRun::next)
      .def("cancel", &PyRun::cancel)
      .def("stats_json", &PyRun::stats_json)
      .def("summary", &PyRun::summary)
      .def("batches_per_epoch", &PyRun::batches_per_epoch)
      .def_property_readonly("prefetch", &PyRun::prefetch)
      .def_property_readonly("held", &PyRun::held)
      .def_property_readonly("name", &PyRun::name)
      .def("graph_dot", &PyRun::graph_dot)
      .def("warnings", &PyRun::warnings);
}
