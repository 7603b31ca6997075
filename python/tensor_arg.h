// One tensor argument of a binding: imported through DLPack, owned for the duration of the call,
// and checked with messages that name the argument, what was expected and what came.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include "common/dtype.h"
#include "dlpack.h"

namespace vidllm::binding {

namespace py = pybind11;

class TensorArg {
 public:
  // Accepts a DLPack capsule or any object with __dlpack__ (torch tensors, numpy arrays).
  TensorArg(py::handle object, const char* name);
  ~TensorArg();
  TensorArg(const TensorArg&) = delete;
  TensorArg& operator=(const TensorArg&) = delete;
  TensorArg(TensorArg&& other) noexcept;
  TensorArg& operator=(TensorArg&&) = delete;

  const char* name() const { return name_; }
  int ndim() const { return tensor_->ndim; }
  int64_t size(int dim) const { return tensor_->shape[dim]; }
  int64_t stride(int dim) const;  // in elements, also when the producer sent no strides
  int64_t numel() const;
  void* data() const;
  bool is_cuda() const { return tensor_->device.device_type == kDLCUDA; }
  int device_id() const { return tensor_->device.device_id; }
  std::string shape_string() const;
  std::string device_string() const;
  std::string dtype_string() const;

  // Checks; each throws ValueError or TypeError naming the argument.
  void expect_ndim(int ndim, const char* layout) const;
  DType expect_float() const;  // float32, float16 or bfloat16
  void expect_dtype(DLDataTypeCode code, int bits, const char* dtype_name) const;
  void expect_bool() const;  // 1-byte bool (or uint8, as older producers export bool)
  void expect_size(int dim, int64_t expected, const char* what) const;
  void expect_contiguous() const;
  void expect_dense() const;  // contiguous unless empty (torch gives empty tensors any strides)
  void expect_last_dim_contiguous() const;
  void expect_same_device(const TensorArg& reference) const;
  // A float tensor of reference's dtype (reference must be float too); returns that dtype.
  DType expect_float_like(const TensorArg& reference) const;

 private:
  const char* name_;
  DLTensor* tensor_ = nullptr;
  DLManagedTensor* legacy_ = nullptr;
  DLManagedTensorVersioned* versioned_ = nullptr;
};

// None -> empty optional; anything else is imported as a tensor.
std::optional<TensorArg> optional_tensor(py::handle object, const char* name);

// The tensor of an optional argument, or null when it was None.
inline const TensorArg* if_given(const std::optional<TensorArg>& tensor) {
  return tensor ? &*tensor : nullptr;
}

// The value that `choices` pairs with `name`, for a string argument; otherwise raises ValueError
// "<argument>: expected 'a' or 'b' or ..., got '<name>'".
template <typename Enum>
Enum parse_choice(const char* argument, const std::string& name,
                  std::initializer_list<std::pair<const char*, Enum>> choices) {
  std::string expected;
  for (const auto& [choice, value] : choices) {
    if (name == choice) return value;
    expected += (expected.empty() ? "'" : " or '") + std::string(choice) + "'";
  }
  throw py::value_error(std::string(argument) + ": expected " + expected + ", got '" + name + "'");
}

// The CUDA stream handed in by the Python layer (an int from torch.cuda.current_stream()).
inline void* stream_from_int(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

}  // namespace vidllm::binding
