#include "bindings/arrays.h"

#include <map>
#include <pybind11/stl.h>
#include <sstream>

namespace alexnet {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::U8: return "uint8";
    case DType::U16: return "uint16";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
  }
  return "?";
}

int64_t itemsize(DType d) {
  switch (d) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::U16: return 2;
    case DType::U8: return 1;
  }
  return 1;
}

namespace {

[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

std::string type_name(py::handle obj) {
  py::handle t = py::type::handle_of(obj);
  std::string mod = py::str(t.attr("__module__"));
  std::string qn = py::str(t.attr("__qualname__"));
  return mod == "builtins" ? qn : mod + "." + qn;
}

bool parse_typestr(const std::string& ts, DType& d) {
  // '<f4' and '|u1' and the like; big-endian data is not accepted.
  if (ts.size() < 3 || ts[0] == '>') return false;
  const std::string k = ts.substr(1);
  if (k == "f4") d = DType::F32;
  else if (k == "f8") d = DType::F64;
  else if (k == "i4") d = DType::I32;
  else if (k == "i8") d = DType::I64;
  else if (k == "u1") d = DType::U8;
  else if (k == "u2") d = DType::U16;
  else if (k == "f2") d = DType::F16;
  else return false;
  return true;
}

void check_c_contiguous(const Array& a, const std::vector<int64_t>& strides) {
  int64_t expect = itemsize(a.dtype);
  for (int i = a.ndim() - 1; i >= 0; --i) {
    if (a.shape[size_t(i)] > 1 && strides[size_t(i)] != expect)
      value_error(a.op, a.name + " must be C-contiguous (got strides that are not; use ascontiguousarray)");
    expect *= a.shape[size_t(i)];
  }
}

// ValueError unless an array found on device `on` is where it should be: on `device`, or on the
// current device when `device` is kCurrentDevice. Names the argument and both devices.
void check_device(const char* op, const char* name, int on, int device) {
  int cur = 0;
  CUDA_CHECK(cudaGetDevice(&cur));
  const int want = device == kCurrentDevice ? cur : device;
  if (on == want) return;
  if (device == kCurrentDevice)
    value_error(op, std::string(name) + " is on device " + std::to_string(on) + " but the current device is " +
                        std::to_string(cur));
  value_error(op, std::string(name) + " is on device " + std::to_string(on) + ", expected device " +
                      std::to_string(want) + " (the current device is " + std::to_string(cur) + ")");
}

std::map<std::string, std::vector<int>>& versions_map() {
  static std::map<std::string, std::vector<int>> m;
  return m;
}

}  // namespace

void value_error(const std::string& op, const std::string& msg) { throw py::value_error(op + ": " + msg); }

int64_t Array::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string Array::shape_str() const {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

Array get_array(py::handle obj, const char* op, const char* name, int device) {
  Array a;
  a.op = op;
  a.name = name;
  std::vector<int64_t> strides;
  std::string typestr;
#if defined(ALEXNET_EMU)
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(op) + ": " + name + " must be a numpy array (the emu backend runs the kernels on the CPU); got " +
               type_name(obj));
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  typestr = py::str(arr.dtype().attr("str"));
  for (py::ssize_t i = 0; i < arr.ndim(); ++i) {
    a.shape.push_back(int64_t(arr.shape(i)));
    strides.push_back(int64_t(arr.strides(i)));
  }
  a.ptr = const_cast<void*>(arr.data());
  a.readonly = !arr.writeable();
  const int on = a.ptr ? emu::pointer_device(a.ptr) : -1;
  if (on >= 0) check_device(op, name, on, device);
#else
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    type_error(std::string(op) + ": " + name +
               " must be a GPU array (cupy, a torch cuda tensor, or any object with __cuda_array_interface__); got " +
               type_name(obj));
  py::dict cai = obj.attr("__cuda_array_interface__");
  typestr = py::str(cai["typestr"]);
  for (auto s : py::tuple(cai["shape"])) a.shape.push_back(s.cast<int64_t>());
  py::tuple data = cai["data"];
  a.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  a.readonly = data[1].cast<bool>();
  bool have_strides = cai.contains("strides") && !cai["strides"].is_none();
  if (have_strides)
    for (auto s : py::tuple(cai["strides"])) strides.push_back(s.cast<int64_t>());
  if (a.ptr) {
    cudaPointerAttributes attr{};
    cudaError_t e = cudaPointerGetAttributes(&attr, a.ptr);
    if (e != cudaSuccess) {
      cudaGetLastError();
      value_error(op, std::string(name) + " does not point to CUDA memory (" + cudaGetErrorString(e) + ")");
    }
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
      value_error(op, std::string(name) + " is not in device memory");
    check_device(op, name, attr.device, device);
  }
#endif
  if (!parse_typestr(typestr, a.dtype))
    type_error(std::string(op) + ": " + name + " has an unsupported dtype '" + typestr + "'");
#if !defined(ALEXNET_EMU)
  if (!have_strides) return a;  // C-contiguous by the interface's definition
#endif
  check_c_contiguous(a, strides);
  return a;
}

static void check_kind(const Array& a, std::initializer_list<DType> dtypes, int ndim) {
  bool ok = false;
  for (DType d : dtypes) ok |= d == a.dtype;
  if (!ok) {
    std::string want;
    for (DType d : dtypes) want += (want.empty() ? "" : " or ") + std::string(dtype_name(d));
    throw py::type_error(a.op + ": " + a.name + " must be " + want + ", got " + dtype_name(a.dtype));
  }
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(a.op, a.name + " must have " + std::to_string(ndim) + " dimensions, got " + std::to_string(a.ndim()) +
                          " (shape " + a.shape_str() + ")");
}

Array input(py::handle obj, const char* op, const char* name, std::initializer_list<DType> dtypes, int ndim,
            int device) {
  Array a = get_array(obj, op, name, device);
  check_kind(a, dtypes, ndim);
  return a;
}

Array output(py::handle obj, const char* op, const char* name, std::initializer_list<DType> dtypes, int ndim,
             int device) {
  Array a = input(obj, op, name, dtypes, ndim, device);
  if (a.readonly) value_error(op, std::string(name) + " is read-only");
  return a;
}

void expect_same_shape(const Array& a, const Array& b) {
  if (a.shape != b.shape)
    value_error(a.op, b.name + " has shape " + b.shape_str() + ", expected " + a.shape_str() + " (the shape of " + a.name + ")");
}

void expect_shape(const Array& a, const std::vector<int64_t>& shape, const std::string& what) {
  if (a.shape != shape) {
    Array t;
    t.shape = shape;
    value_error(a.op, a.name + " has shape " + a.shape_str() + ", expected " + t.shape_str() + (what.empty() ? "" : " " + what));
  }
}

void expect_same_dtype(const Array& a, const Array& b) {
  if (a.dtype != b.dtype)
    throw py::type_error(a.op + ": " + b.name + " is " + dtype_name(b.dtype) + " but " + a.name + " is " + dtype_name(a.dtype));
}

DType expect_storage(const Array& lead, std::initializer_list<const Array*> others) {
  auto storage = [](DType d) { return std::string(d == DType::U16 ? "uint16 (BF16 storage)" : dtype_name(d)); };
  for (const Array* a : others)
    if (!a->name.empty() && a->dtype != lead.dtype)  // (an absent optional argument has no name)
      throw py::type_error(lead.op + ": " + a->name + " is " + storage(a->dtype) + " but " + lead.name + " is " +
                           storage(lead.dtype) + ": the activation arguments must all be float32 or all BF16");
  return lead.dtype;
}

void expect_no_overlap(const Array& a, const Array& b) {
  if (!a.ptr || !b.ptr) return;
  const char* a0 = static_cast<const char*>(a.ptr);
  const char* b0 = static_cast<const char*>(b.ptr);
  const char* a1 = a0 + a.numel() * itemsize(a.dtype);
  const char* b1 = b0 + b.numel() * itemsize(b.dtype);
  if (a.numel() && b.numel() && a0 < b1 && b0 < a1) value_error(a.op, a.name + " and " + b.name + " overlap in memory");
}

void expect_no_overlap(std::initializer_list<const Array*> outs, std::initializer_list<const Array*> others) {
  for (const Array* o : outs)
    for (const Array* a : others)
      if (o != a) expect_no_overlap(*o, *a);
}

void register_versions(std::initializer_list<const char*> ops, int count) {
  std::vector<int> versions;
  for (int v = 1; v <= count; ++v) versions.push_back(v);
  for (const char* op : ops) versions_map()[op] = versions;
}

py::dict kernel_versions() {
  py::dict d;
  for (auto& kv : versions_map()) d[py::str(kv.first)] = py::cast(kv.second);
  return d;
}

}  // namespace alexnet
