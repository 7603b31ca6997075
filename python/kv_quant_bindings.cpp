// Bindings of the sub-2-bit KV cache group quantizers (csrc/kv_quant); pack and unpack are in
// kv_quant_pack_bindings.cpp. Every entry point walks the same phases: import, devices, dtypes,
// layout and shapes, then params, then dispatch.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "dispatch.h"
#include "kv_quant/kv_quant.h"
#include "kv_quant_checks.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace vidllm::binding {
namespace {

using kv_quant::Mode;
using kv_quant::Packing;

// x [R, T, Cx] float with contiguous channels; returns its dtype.
DType check_x(const TensorArg& x) {
  x.expect_ndim(3, "[rows, tokens, channels]");
  const DType dtype = x.expect_float();
  x.expect_last_dim_contiguous();
  return dtype;
}

// The quantized side of a call: codes, scale and zero. zero may be None where the mode says
// (channel groups); token groups always have one.
struct Quantized {
  Quantized(py::handle codes_obj, py::handle scale_obj, py::handle zero_obj, bool zero_may_be_none)
      : codes(codes_obj, "codes"),
        scale(scale_obj, "scale"),
        zero(zero_may_be_none ? optional_tensor(zero_obj, "zero")
                              : std::optional<TensorArg>(std::in_place, zero_obj, "zero")) {}
  TensorArg codes;
  TensorArg scale;
  std::optional<TensorArg> zero;
};

// The channel map and the quantized tensors of a channel-group call whose float tensor `primary`
// (x or out) is [rows, tokens, channels]; returns the map.
ChannelMap check_channel_groups(const TensorArg& primary, const std::optional<TensorArg>& channels,
                                const char* limit_name, bool require_distinct, const Quantized& q,
                                Mode mode, int64_t group_size) {
  const int64_t rows = primary.size(0);
  const ChannelMap map =
      check_channel_map(channels, primary, rows, primary.size(2), limit_name, require_distinct);
  const int64_t groups = kv_quant::ceil_groups(primary.size(1), group_size);
  const int64_t bytes = kv_quant::packed_bytes(map.count, kv_quant::mode_packing(mode));
  check_buffer(q.codes, kDLUInt, 8, "uint8", primary, rows, primary.size(1), bytes,
               "[rows, tokens, code bytes]");
  check_buffer(q.scale, kDLFloat, 32, "float32", primary, rows, groups, map.count,
               "[rows, groups, C]");
  if ((mode == Mode::kMinMax2) != q.zero.has_value())
    throw py::value_error("zero: expected a tensor for mode 'minmax2' and None otherwise");
  if (q.zero)
    check_buffer(*q.zero, kDLFloat, 32, "float32", primary, rows, groups, map.count,
                 "[rows, groups, C]");
  return map;
}

// The quantized tensors of a token-group call whose float tensor `primary` (x or out) is
// [rows, tokens, channels].
void check_token_groups(const TensorArg& primary, const Quantized& q, int64_t group_size) {
  const int64_t rows = primary.size(0);
  const int64_t tokens = primary.size(1);
  const int64_t groups = kv_quant::ceil_groups(primary.size(2), group_size);
  const int64_t bytes = kv_quant::packed_bytes(primary.size(2), Packing::kBits2);
  check_buffer(q.codes, kDLUInt, 8, "uint8", primary, rows, tokens, bytes,
               "[rows, tokens, code bytes]");
  for (const TensorArg* buffer : {&q.scale, &*q.zero})
    check_buffer(*buffer, kDLFloat, 32, "float32", primary, rows, tokens, groups,
                 "[rows, tokens, groups]");
}

// The quantized side every quantize and dequantize params struct shares: codes, scale and zero
// (null when absent), and the [rows, tokens] grid of the float tensor `primary` (x or out).
template <typename Params>
void fill_quantized(Params& params, const TensorArg& primary, const Quantized& q,
                    int64_t group_size) {
  params.codes = static_cast<decltype(params.codes)>(q.codes.data());
  params.scale = static_cast<decltype(params.scale)>(q.scale.data());
  params.zero = q.zero ? static_cast<decltype(params.zero)>(q.zero->data()) : nullptr;
  params.rows = primary.size(0);
  params.tokens = primary.size(1);
  params.group_size = group_size;
}

// The input x [rows, tokens, channels] of a quantize call.
template <typename Params>
void fill_input(Params& params, const TensorArg& x, DType dtype) {
  params.x = x.data();
  params.x_stride_row = x.stride(0);
  params.x_stride_token = x.stride(1);
  params.dtype = dtype;
}

// The channel map and mode of a channel-group call.
template <typename Params>
void fill_channel_map(Params& params, const ChannelMap& map, Mode mode) {
  params.channels = map.data;
  params.heads = map.heads;
  params.quantized_channels = map.count;
  params.mode = mode;
}

void kv_quant_quantize_channel_groups(py::handle x_obj, py::handle channels_obj,
                                      py::handle codes_obj, py::handle scale_obj,
                                      py::handle zero_obj, const std::string& mode_name,
                                      int64_t group_size, uintptr_t stream) {
  const TensorArg x(x_obj, "x");
  const std::optional<TensorArg> channels = optional_tensor(channels_obj, "channels");
  const Quantized q(codes_obj, scale_obj, zero_obj, /*zero_may_be_none=*/true);
  const Mode mode = parse_kv_mode(mode_name);
  check_group_size(group_size);
  const Launch launch = select_launch(x, stream);
  const DType dtype = check_x(x);
  const ChannelMap map = check_channel_groups(x, channels, "the channels of x",
                                              /*require_distinct=*/false, q, mode, group_size);

  kv_quant::ChannelGroupQuantParams params;
  fill_input(params, x, dtype);
  fill_quantized(params, x, q, group_size);
  fill_channel_map(params, map, mode);
  params.x_channels = x.size(2);
  VIDLLM_RUN_KERNEL(kv_quant, quantize_channel_groups, params, launch);
}

void kv_quant_dequantize_channel_groups(py::handle codes_obj, py::handle scale_obj,
                                        py::handle zero_obj, py::handle channels_obj,
                                        py::handle out_obj, const std::string& mode_name,
                                        int64_t group_size, uintptr_t stream) {
  const Quantized q(codes_obj, scale_obj, zero_obj, /*zero_may_be_none=*/true);
  const std::optional<TensorArg> channels = optional_tensor(channels_obj, "channels");
  const TensorArg out(out_obj, "out");
  const Mode mode = parse_kv_mode(mode_name);
  check_group_size(group_size);
  const Launch launch = select_launch(out, stream);
  out.expect_ndim(3, "[rows, tokens, channels]");
  const DType out_dtype = out.expect_float();
  const ChannelMap map = check_channel_groups(out, channels, "the channels of out",
                                              /*require_distinct=*/true, q, mode, group_size);

  kv_quant::ChannelGroupDequantParams params;
  fill_quantized(params, out, q, group_size);
  fill_channel_map(params, map, mode);
  params.out = out.data();
  params.out_stride_row = out.stride(0);
  params.out_stride_token = out.stride(1);
  params.out_stride_channel = out.stride(2);
  params.out_dtype = out_dtype;
  params.out_channels = out.size(2);
  VIDLLM_RUN_KERNEL(kv_quant, dequantize_channel_groups, params, launch);
}

void kv_quant_quantize_token_groups(py::handle x_obj, py::handle codes_obj, py::handle scale_obj,
                                    py::handle zero_obj, int64_t group_size, uintptr_t stream) {
  const TensorArg x(x_obj, "x");
  const Quantized q(codes_obj, scale_obj, zero_obj, /*zero_may_be_none=*/false);
  check_group_size(group_size);
  const Launch launch = select_launch(x, stream);
  const DType dtype = check_x(x);
  check_token_groups(x, q, group_size);

  kv_quant::TokenGroupQuantParams params;
  fill_input(params, x, dtype);
  fill_quantized(params, x, q, group_size);
  params.channels = x.size(2);
  VIDLLM_RUN_KERNEL(kv_quant, quantize_token_groups, params, launch);
}

void kv_quant_dequantize_token_groups(py::handle codes_obj, py::handle scale_obj,
                                      py::handle zero_obj, py::handle out_obj, int64_t group_size,
                                      uintptr_t stream) {
  const Quantized q(codes_obj, scale_obj, zero_obj, /*zero_may_be_none=*/false);
  const TensorArg out(out_obj, "out");
  check_group_size(group_size);
  const Launch launch = select_launch(out, stream);
  out.expect_ndim(3, "[rows, tokens, channels]");
  const DType out_dtype = out.expect_float();
  out.expect_dense();
  check_token_groups(out, q, group_size);

  kv_quant::TokenGroupDequantParams params;
  fill_quantized(params, out, q, group_size);
  params.out = out.data();
  params.out_dtype = out_dtype;
  params.channels = out.size(2);
  VIDLLM_RUN_KERNEL(kv_quant, dequantize_token_groups, params, launch);
}

}  // namespace

void register_kv_quant_pack(py::module_& m);  // kv_quant_pack_bindings.cpp

void register_kv_quant(py::module_& m) {
  register_kv_quant_pack(m);
  m.def("kv_quant_quantize_channel_groups", &kv_quant_quantize_channel_groups, py::arg("x"),
        py::arg("channels"), py::arg("codes"), py::arg("scale"), py::arg("zero"), py::arg("mode"),
        py::arg("group_size"), py::arg("stream") = 0,
        "Quantizes x [R, T, Cx] per channel in groups of group_size tokens into codes, scale and "
        "(minmax2) zero.");
  m.def("kv_quant_dequantize_channel_groups", &kv_quant_dequantize_channel_groups, py::arg("codes"),
        py::arg("scale"), py::arg("zero"), py::arg("channels"), py::arg("out"), py::arg("mode"),
        py::arg("group_size"), py::arg("stream") = 0,
        "Writes the dequantized channels of every row into out [R, T, Cx]; other channels are "
        "left untouched.");
  m.def("kv_quant_quantize_token_groups", &kv_quant_quantize_token_groups, py::arg("x"),
        py::arg("codes"), py::arg("scale"), py::arg("zero"), py::arg("group_size"),
        py::arg("stream") = 0,
        "2-bit min/max quantization of x [R, T, C] in groups of group_size channels per token.");
  m.def("kv_quant_dequantize_token_groups", &kv_quant_dequantize_token_groups, py::arg("codes"),
        py::arg("scale"), py::arg("zero"), py::arg("out"), py::arg("group_size"),
        py::arg("stream") = 0, "Writes the dequantized token groups into out [R, T, C].");
}

}  // namespace vidllm::binding
