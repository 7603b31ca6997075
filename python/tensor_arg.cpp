#include "tensor_arg.h"

#include <string>
#include <utility>

namespace vidllm::binding {
namespace {

std::string type_name(py::handle object) {
  return py::str(py::type::handle_of(object).attr("__name__"));
}

py::object capsule_of(py::handle object, const char* name) {
  if (PyCapsule_CheckExact(object.ptr())) return py::reinterpret_borrow<py::object>(object);
  if (!py::hasattr(object, "__dlpack__")) {
    throw py::type_error(std::string(name) +
                         ": expected a tensor (torch.Tensor, numpy.ndarray or a DLPack capsule), "
                         "got " +
                         type_name(object));
  }
  bool cuda = false;
  if (py::hasattr(object, "__dlpack_device__")) {
    const py::tuple device = object.attr("__dlpack_device__")();
    cuda = device[0].cast<int>() == kDLCUDA;
  }
  // stream=-1: no cross-stream synchronization; the caller launches on its current stream.
  return cuda ? object.attr("__dlpack__")(py::arg("stream") = -1) : object.attr("__dlpack__")();
}

}  // namespace

TensorArg::TensorArg(py::handle object, const char* name) : name_(name) {
  const py::object capsule = capsule_of(object, name);
  PyObject* raw = capsule.ptr();
  if (PyCapsule_IsValid(raw, "dltensor")) {
    legacy_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(raw, "dltensor"));
    PyCapsule_SetName(raw, "used_dltensor");
    tensor_ = &legacy_->dl_tensor;
  } else if (PyCapsule_IsValid(raw, "dltensor_versioned")) {
    auto* versioned =
        static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(raw, "dltensor_versioned"));
    if (versioned->version.major != 1) {
      throw py::type_error(std::string(name) + ": unsupported DLPack major version " +
                           std::to_string(versioned->version.major) + " (expected 1)");
    }
    versioned_ = versioned;
    PyCapsule_SetName(raw, "used_dltensor_versioned");
    tensor_ = &versioned_->dl_tensor;
  } else {
    throw py::type_error(std::string(name) +
                         ": expected an unused DLPack capsule named 'dltensor' or "
                         "'dltensor_versioned'");
  }
}

TensorArg::~TensorArg() {
  if (legacy_ != nullptr && legacy_->deleter != nullptr) legacy_->deleter(legacy_);
  if (versioned_ != nullptr && versioned_->deleter != nullptr) versioned_->deleter(versioned_);
}

TensorArg::TensorArg(TensorArg&& other) noexcept
    : name_(other.name_),
      tensor_(std::exchange(other.tensor_, nullptr)),
      legacy_(std::exchange(other.legacy_, nullptr)),
      versioned_(std::exchange(other.versioned_, nullptr)) {}

int64_t TensorArg::stride(int dim) const {
  if (tensor_->strides != nullptr) return tensor_->strides[dim];
  int64_t compact = 1;
  for (int d = tensor_->ndim - 1; d > dim; --d) compact *= tensor_->shape[d];
  return compact;
}

int64_t TensorArg::numel() const {
  int64_t count = 1;
  for (int d = 0; d < tensor_->ndim; ++d) count *= tensor_->shape[d];
  return count;
}

void* TensorArg::data() const { return static_cast<char*>(tensor_->data) + tensor_->byte_offset; }

std::string TensorArg::shape_string() const {
  std::string text = "[";
  for (int d = 0; d < tensor_->ndim; ++d) {
    if (d > 0) text += ", ";
    text += std::to_string(tensor_->shape[d]);
  }
  return text + "]";
}

std::string TensorArg::device_string() const {
  switch (tensor_->device.device_type) {
    case kDLCPU:
      return "cpu";
    case kDLCUDA:
      return "cuda:" + std::to_string(tensor_->device.device_id);
    default:
      return "DLPack device type " + std::to_string(tensor_->device.device_type);
  }
}

std::string TensorArg::dtype_string() const {
  const DLDataType type = tensor_->dtype;
  const std::string bits = std::to_string(type.bits);
  std::string text;
  switch (type.code) {
    case kDLInt:
      text = "int" + bits;
      break;
    case kDLUInt:
      text = "uint" + bits;
      break;
    case kDLFloat:
      text = "float" + bits;
      break;
    case kDLBfloat:
      text = "bfloat" + bits;
      break;
    case kDLBool:
      text = "bool";
      break;
    case kDLComplex:
      text = "complex" + bits;
      break;
    default:
      text = "DLPack type code " + std::to_string(type.code);
  }
  return type.lanes == 1 ? text : text + "x" + std::to_string(type.lanes);
}

void TensorArg::expect_ndim(int ndim, const char* layout) const {
  if (tensor_->ndim != ndim) {
    throw py::value_error(std::string(name_) + ": expected a " + std::to_string(ndim) +
                          "-D tensor " + layout + ", got shape " + shape_string());
  }
}

DType TensorArg::expect_float() const {
  const DLDataType type = tensor_->dtype;
  if (type.lanes == 1 && type.code == kDLFloat && type.bits == 32) return DType::kFloat32;
  if (type.lanes == 1 && type.code == kDLFloat && type.bits == 16) return DType::kFloat16;
  if (type.lanes == 1 && type.code == kDLBfloat && type.bits == 16) return DType::kBFloat16;
  throw py::type_error(std::string(name_) + ": expected dtype float32, float16 or bfloat16, got " +
                       dtype_string());
}

void TensorArg::expect_dtype(DLDataTypeCode code, int bits, const char* dtype_name) const {
  const DLDataType type = tensor_->dtype;
  if (type.lanes != 1 || type.code != code || type.bits != bits) {
    throw py::type_error(std::string(name_) + ": expected dtype " + dtype_name + ", got " +
                         dtype_string());
  }
}

void TensorArg::expect_bool() const {
  const DLDataType type = tensor_->dtype;
  const bool one_byte = type.lanes == 1 && type.bits == 8;
  if (!one_byte || (type.code != kDLBool && type.code != kDLUInt)) {
    throw py::type_error(std::string(name_) + ": expected dtype bool, got " + dtype_string());
  }
}

void TensorArg::expect_size(int dim, int64_t expected, const char* what) const {
  if (tensor_->shape[dim] != expected) {
    throw py::value_error(std::string(name_) + ": expected size " + std::to_string(expected) +
                          " in dimension " + std::to_string(dim) + " (" + what + "), got shape " +
                          shape_string());
  }
}

void TensorArg::expect_dense() const {
  if (numel() > 0) expect_contiguous();
}

void TensorArg::expect_contiguous() const {
  int64_t compact = 1;
  for (int d = tensor_->ndim - 1; d >= 0; --d) {
    if (tensor_->shape[d] != 1 && stride(d) != compact) {
      throw py::value_error(std::string(name_) +
                            ": expected a contiguous tensor (call .contiguous()), got shape " +
                            shape_string() + " with a non-contiguous layout");
    }
    compact *= tensor_->shape[d];
  }
}

void TensorArg::expect_last_dim_contiguous() const {
  const int last = tensor_->ndim - 1;
  if (last >= 0 && tensor_->shape[last] > 1 && stride(last) != 1) {
    throw py::value_error(std::string(name_) +
                          ": expected the last dimension to be contiguous (stride 1), got stride " +
                          std::to_string(stride(last)));
  }
}

void TensorArg::expect_same_device(const TensorArg& reference) const {
  const DLDevice a = tensor_->device;
  const DLDevice b = reference.tensor_->device;
  if (a.device_type != b.device_type || a.device_id != b.device_id) {
    throw py::value_error(std::string(name_) + ": expected a tensor on " +
                          reference.device_string() + " like " + reference.name() + ", got " +
                          device_string());
  }
}

DType TensorArg::expect_float_like(const TensorArg& reference) const {
  const DType dtype = reference.expect_float();
  if (expect_float() != dtype) {
    throw py::type_error(std::string(name_) + ": expected dtype " + reference.dtype_string() +
                         " like " + reference.name() + ", got " + dtype_string());
  }
  return dtype;
}

std::optional<TensorArg> optional_tensor(py::handle object, const char* name) {
  if (object.is_none()) return std::nullopt;
  return std::optional<TensorArg>(std::in_place, object, name);
}

}  // namespace vidllm::binding
