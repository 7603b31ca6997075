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

// codes are uint8, or int8 for trits; packed bytes are uint8.
void expect_side_dtype(const TensorArg& side, bool is_codes, Packing packing) {
  if (is_codes && packing == Packing::kTrits)
    side.expect_dtype(kDLInt, 8, "int8");
  else
    side.expect_dtype(kDLUInt, 8, "uint8");
}

// Checks a pack (source: codes, dest: packed) or unpack (source: packed, dest: codes) call: the
// source is read row by row (contiguous rows), the dest written whole (dense), invalid is an int64
// [1] counter; returns where the call runs.
Launch check_packing_call(const TensorArg& source, const TensorArg& dest, const TensorArg& invalid,
                          bool source_is_codes, Packing packing, uintptr_t stream) {
  const TensorArg& codes = source_is_codes ? source : dest;
  const TensorArg& packed = source_is_codes ? dest : source;
  const char* codes_layout = "[rows, n]";
  const char* packed_layout = "[rows, packed bytes]";
  const Launch launch = select_launch(source, stream, {&dest, &invalid});
  invalid.expect_dtype(kDLInt, 64, "int64");
  invalid.expect_ndim(1, "[1]");
  invalid.expect_size(0, 1, "a single count");
  expect_side_dtype(source, source_is_codes, packing);
  expect_side_dtype(dest, !source_is_codes, packing);
  source.expect_ndim(2, source_is_codes ? codes_layout : packed_layout);
  source.expect_last_dim_contiguous();
  dest.expect_ndim(2, source_is_codes ? packed_layout : codes_layout);
  dest.expect_dense();
  dest.expect_size(0, source.size(0), (std::string("rows of ") + source.name()).c_str());
  packed.expect_size(1, kv_quant::packed_bytes(codes.size(1), packing),
                     source_is_codes ? "ceil(n / codes per byte)"
                                     : "ceil(n / codes per byte) for the n columns of codes");
  return launch;
}

// The fields PackParams and UnpackParams share, for a call checked by check_packing_call.
template <typename Params>
void fill_counts(Params& params, const TensorArg& source, const TensorArg& codes,
                 const TensorArg& invalid, Packing packing) {
  params.invalid = static_cast<int64_t*>(invalid.data());
  params.rows = source.size(0);
  params.n = codes.size(1);
  params.packing = packing;
}

// kv_quant_pack (kPack: codes -> packed) and kv_quant_unpack (packed -> codes).
template <bool kPack>
void kv_quant_pack_or_unpack(py::handle source_obj, py::handle dest_obj, py::handle invalid_obj,
                             const std::string& packing_name, uintptr_t stream) {
  const TensorArg source(source_obj, kPack ? "codes" : "packed");
  const TensorArg dest(dest_obj, kPack ? "packed" : "codes");
  const TensorArg invalid(invalid_obj, "invalid");
  const Packing packing = parse_packing(packing_name);
  const Launch launch =
      check_packing_call(source, dest, invalid, /*source_is_codes=*/kPack, packing, stream);
  const TensorArg& codes = kPack ? source : dest;
  const TensorArg& packed = kPack ? dest : source;

  if constexpr (kPack) {
    kv_quant::PackParams params;
    params.codes = codes.data();
    params.codes_row_stride = codes.stride(0);
    params.packed = static_cast<uint8_t*>(packed.data());
    fill_counts(params, source, codes, invalid, packing);
    VIDLLM_RUN_KERNEL(kv_quant, pack, params, launch);
  } else {
    kv_quant::UnpackParams params;
    params.packed = static_cast<const uint8_t*>(packed.data());
    params.packed_row_stride = packed.stride(0);
    params.codes = codes.data();
    fill_counts(params, source, codes, invalid, packing);
    VIDLLM_RUN_KERNEL(kv_quant, unpack, params, launch);
  }
}

}  // namespace

void register_kv_quant_pack(py::module_& m) {
  m.def("kv_quant_pack", &kv_quant_pack_or_unpack<true>, py::arg("codes"), py::arg("packed"),
        py::arg("invalid"), py::arg("packing"), py::arg("stream") = 0,
        "Packs codes [rows, n] (uint8; int8 trits for 'trits') into packed [rows, bytes] and "
        "writes the number of invalid codes into invalid (int64 [1]).");
  m.def("kv_quant_unpack", &kv_quant_pack_or_unpack<false>, py::arg("packed"), py::arg("codes"),
        py::arg("invalid"), py::arg("packing"), py::arg("stream") = 0,
        "Unpacks packed [rows, bytes] into codes [rows, n] and writes the number of invalid "
        "bytes (non-zero padding, trit bytes above 242) into invalid (int64 [1]).");
}

}  // namespace vidllm::binding
