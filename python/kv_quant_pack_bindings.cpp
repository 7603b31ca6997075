// Bindings of the public packing kernels (csrc/kv_quant): 1-bit, 2-bit and trit pack/unpack.
// Each entry point walks the same phases: import, devices, dtypes, layout and shapes, then
// params, then dispatch.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "dispatch.h"
#include "kv_quant/kv_quant.h"
#include "kv_quant_checks.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace vidllm::binding {
namespace {

using kv_quant::Packing;

void expect_code_dtype(const TensorArg& codes, Packing packing) {
  if (packing == Packing::kTrits)
    codes.expect_dtype(kDLInt, 8, "int8");
  else
    codes.expect_dtype(kDLUInt, 8, "uint8");
}

void check_invalid_counter(const TensorArg& invalid, const TensorArg& primary) {
  invalid.expect_same_device(primary);
  invalid.expect_dtype(kDLInt, 64, "int64");
  invalid.expect_ndim(1, "[1]");
  invalid.expect_size(0, 1, "a single count");
}

void kv_quant_pack(py::handle codes_obj, py::handle packed_obj, py::handle invalid_obj,
                   const std::string& packing_name, uintptr_t stream) {
  const TensorArg codes(codes_obj, "codes");
  const TensorArg packed(packed_obj, "packed");
  const TensorArg invalid(invalid_obj, "invalid");
  const Packing packing = parse_packing(packing_name);
  const Backend backend = select_backend(codes);
  packed.expect_same_device(codes);
  check_invalid_counter(invalid, codes);
  expect_code_dtype(codes, packing);
  packed.expect_dtype(kDLUInt, 8, "uint8");
  codes.expect_ndim(2, "[rows, n]");
  codes.expect_last_dim_contiguous();
  packed.expect_ndim(2, "[rows, packed bytes]");
  packed.expect_dense();
  packed.expect_size(0, codes.size(0), "rows of codes");
  packed.expect_size(1, kv_quant::packed_bytes(codes.size(1), packing), "ceil(n / codes per byte)");

  kv_quant::PackParams params;
  params.codes = codes.data();
  params.codes_row_stride = codes.stride(0);
  params.packed = static_cast<uint8_t*>(packed.data());
  params.invalid = static_cast<int64_t*>(invalid.data());
  params.rows = codes.size(0);
  params.n = codes.size(1);
  params.packing = packing;
  params.device = codes.device_id();
  VIDLLM_RUN_KERNEL(kv_quant, pack, params, backend, stream);
}

void kv_quant_unpack(py::handle packed_obj, py::handle codes_obj, py::handle invalid_obj,
                     const std::string& packing_name, uintptr_t stream) {
  const TensorArg packed(packed_obj, "packed");
  const TensorArg codes(codes_obj, "codes");
  const TensorArg invalid(invalid_obj, "invalid");
  const Packing packing = parse_packing(packing_name);
  const Backend backend = select_backend(packed);
  codes.expect_same_device(packed);
  check_invalid_counter(invalid, packed);
  packed.expect_dtype(kDLUInt, 8, "uint8");
  expect_code_dtype(codes, packing);
  packed.expect_ndim(2, "[rows, packed bytes]");
  packed.expect_last_dim_contiguous();
  codes.expect_ndim(2, "[rows, n]");
  codes.expect_dense();
  codes.expect_size(0, packed.size(0), "rows of packed");
  packed.expect_size(1, kv_quant::packed_bytes(codes.size(1), packing),
                     "ceil(n / codes per byte) for the n columns of codes");

  kv_quant::UnpackParams params;
  params.packed = static_cast<const uint8_t*>(packed.data());
  params.packed_row_stride = packed.stride(0);
  params.codes = codes.data();
  params.invalid = static_cast<int64_t*>(invalid.data());
  params.rows = packed.size(0);
  params.n = codes.size(1);
  params.packing = packing;
  params.device = packed.device_id();
  VIDLLM_RUN_KERNEL(kv_quant, unpack, params, backend, stream);
}

}  // namespace

void register_kv_quant_pack(py::module_& m) {
  m.def("kv_quant_pack", &kv_quant_pack, py::arg("codes"), py::arg("packed"), py::arg("invalid"),
        py::arg("packing"), py::arg("stream") = 0,
        "Packs codes [rows, n] (uint8; int8 trits for 'trits') into packed [rows, bytes] and "
        "writes the number of invalid codes into invalid (int64 [1]).");
  m.def("kv_quant_unpack", &kv_quant_unpack, py::arg("packed"), py::arg("codes"),
        py::arg("invalid"), py::arg("packing"), py::arg("stream") = 0,
        "Unpacks packed [rows, bytes] into codes [rows, n] and writes the number of invalid "
        "bytes (non-zero padding, trit bytes above 242) into invalid (int64 [1]).");
}

}  // namespace vidllm::binding
