// The only place that turns Python objects into pointers.
//
//   emu build:  numpy arrays (the kernels run on the CPU over host memory)
//   cuda build: any object with __cuda_array_interface__ (cupy arrays, torch cuda
//               tensors, ...) on the current device
//
// Every check raises TypeError (wrong kind of object or dtype) or ValueError (shape,
// ndim, contiguity, device, read-only output) naming the op and the argument, before
// anything is launched.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/cuda_common.h"
#include "common/launch.h"

namespace alexnet {
namespace py = pybind11;

enum class DType { F32, F64, I32, I64, U8, U16, F16, BF16 };

const char* dtype_name(DType d);
int64_t itemsize(DType d);  // bytes per element

struct Array {
  void* ptr = nullptr;
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  bool readonly = false;
  std::string op, name;  // for messages

  int ndim() const { return int(shape.size()); }
  int64_t numel() const;
  int64_t dim(int i) const { return shape[size_t(i < 0 ? i + ndim() : i)]; }
  std::string shape_str() const;
  template <class T>
  T* as() const { return static_cast<T*>(ptr); }
  float* f32() const { return as<float>(); }
  size_t nbytes() const { return size_t(numel() * itemsize(dtype)); }
};

// `device` argument of the readers: the array must live on the current device (the default), or
// on the device numbered.
inline constexpr int kCurrentDevice = -1;

// Reads `obj` as an array of this build's kind; checks C-contiguity and the device: on cuda every
// array, on emu the arrays the runtime allocated (a plain numpy array is host memory that every
// virtual device may read; emu/README.md).
Array get_array(py::handle obj, const char* op, const char* name, int device = kCurrentDevice);

// get_array plus the checks most ops need.
Array input(py::handle obj, const char* op, const char* name, std::initializer_list<DType> dtypes, int ndim = -1,
            int device = kCurrentDevice);
Array output(py::handle obj, const char* op, const char* name, std::initializer_list<DType> dtypes, int ndim = -1,
             int device = kCurrentDevice);

// ValueError unless a and b have the same shape.
void expect_same_shape(const Array& a, const Array& b);
// ValueError unless a's shape is `shape`; `what` explains where the expectation comes from.
void expect_shape(const Array& a, const std::vector<int64_t>& shape, const std::string& what = "");
// ValueError unless a and b have the same dtype.
void expect_same_dtype(const Array& a, const Array& b);
// ValueError if two arrays overlap in memory (an output aliasing an input). An Array without
// memory (an absent optional argument: ptr null) overlaps nothing.
void expect_no_overlap(const Array& a, const Array& b);
// expect_no_overlap(*o, *a) for every output o and every array a of `others` that is not o itself.
void expect_no_overlap(std::initializer_list<const Array*> outs, std::initializer_list<const Array*> others);

// Storage of the activation-like arguments of a memory-bound op (common/storage.cuh): read them
// with the dtypes kStorageDTypes (float32, or uint16 holding BF16 bits), then expect_storage(lead,
// {&others...}): TypeError naming the op and the first argument whose dtype differs from lead's
// (all float32 or all BF16; nothing mixed). Returns the storage.
inline constexpr std::initializer_list<DType> kStorageDTypes{DType::F32, DType::U16};
DType expect_storage(const Array& lead, std::initializer_list<const Array*> others);
// f(T{}) with T the element type of storage d: float (F32) or uint16_t (U16, BF16 bits).
template <class F>
void with_storage(DType d, F&& f) {
  if (d == DType::U16)
    f(uint16_t{});
  else
    f(float{});
}

[[noreturn]] void value_error(const std::string& op, const std::string& msg);

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Numbered kernel versions by op name, filled by the bind_* functions from the families'
// constants (`count` = kernels::k<Family>Versions: versions 1..count; common/launch.h).
void register_versions(std::initializer_list<const char*> ops, int count);
py::dict kernel_versions();

}  // namespace alexnet
