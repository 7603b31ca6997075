// Bindings of the sub-2-bit KV cache group quantizers (csrc/kv_quant); pack and unpack are in
// kv_quant_pack_bindings.cpp. Every entry point walks the same phases: import, devices, dtypes,
// layout and shapes, then params, then dispatch.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>

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

// The channel map and the codes, scale and zero of a channel-group call whose float tensor
// `primary` (x or out) is [rows, tokens, channels]; returns the map.
ChannelMap check_channel_groups(const TensorArg& primary, const std::optional<TensorArg>& channels,
                                const char* limit_name, bool require_distinct,
                                const TensorArg& codes, const TensorArg& scale,
                                const std::optional<TensorArg>& zero, Mode mode,
                                int64_t group_size) {
  const int64_t rows = primary.size(0);
  const ChannelMap map =
      check_channel_map(channels, primary, rows, primary.size(2), limit_name, require_distinct);
  const int64_t groups = kv_quant::ceil_groups(primary.size(1), group_size);
  const int64_t bytes = kv_quant::packed_bytes(map.count, kv_quant::mode_packing(mode));
  check_buffer(codes, kDLUInt, 8, "uint8", primary, rows, primary.size(1), bytes,
               "[rows, tokens, code bytes]");
  check_buffer(scale, kDLFloat, 32, "float32", primary, rows, groups, map.count,
               "[rows, groups, C]");
  if ((mode == Mode::kMinMax2) != zero.has_value())
    throw py::value_error("zero: expected a tensor for mode 'minmax2' and None otherwise");
  if (zero)
    check_buffer(*zero, kDLFloat, 32, "float32", primary, rows, groups, map.count,
                 "[rows, groups, C]");
  return map;
}

// The codes, scale and zero of a token-group call whose float tensor `primary` (x or out) is
// [rows, tokens, channels].
void check_token_groups(const TensorArg& primary, const TensorArg& codes, const TensorArg& scale,
                        const TensorArg& zero, int64_t group_size) {
  const int64_t rows = primary.size(0);
  const int64_t tokens = primary.size(1);
  const int64_t groups = kv_quant::ceil_groups(primary.size(2), group_size);
  const int64_t bytes = kv_quant::packed_bytes(primary.size(2), Packing::kBits2);
  check_buffer(codes, kDLUInt, 8, "uint8", primary, rows, tokens, bytes,
               "[rows, tokens, code bytes]");
  for (const TensorArg* buffer : {&scale, &zero})
    check_buffer(*buffer, kDLFloat, 32, "float32", primary, rows, tokens, groups,
                 "[rows, tokens, groups]");
}

void kv_quant_quantize_channel_groups(py::handle x_obj, py::handle channels_obj,
                                      py::handle codes_obj, py::handle scale_obj,
                                      py::handle zero_obj, const std::string& mode_name,
                                      int64_t group_size, uintptr_t stream) {
  const TensorArg x(x_obj, "x");
  const std::optional<TensorArg> channels = optional_tensor(channels_obj, "channels");
  const TensorArg codes(codes_obj, "codes");
  const TensorArg scale(scale_obj, "scale");
  const std::optional<TensorArg> zero = optional_tensor(zero_obj, "zero");
  const Mode mode = parse_kv_mode(mode_name);
  check_group_size(group_size);
  const Backend backend = select_backend(x);
  const DType dtype = check_x(x);
  const int64_t rows = x.size(0);
  const int64_t tokens = x.size(1);
  const ChannelMap map =
      check_channel_groups(x, channels, "the channels of x",
                           /*require_distinct=*/false, codes, scale, zero, mode, group_size);

  kv_quant::ChannelGroupQuantParams params;
  params.x = x.data();
  params.x_stride_row = x.stride(0);
  params.x_stride_token = x.stride(1);
  params.dtype = dtype;
  params.channels = map.data;
  params.heads = map.heads;
  params.codes = static_cast<uint8_t*>(codes.data());
  params.scale = static_cast<float*>(scale.data());
  params.zero = zero ? static_cast<float*>(zero->data()) : nullptr;
  params.rows = rows;
  params.tokens = tokens;
  params.x_channels = x.size(2);
  params.quantized_channels = map.count;
  params.group_size = group_size;
  params.mode = mode;
  params.device = x.device_id();
  VIDLLM_RUN_KERNEL(kv_quant, quantize_channel_groups, params, backend, stream);
}

void kv_quant_dequantize_channel_groups(py::handle codes_obj, py::handle scale_obj,
                                        py::handle zero_obj, py::handle channels_obj,
                                        py::handle out_obj, const std::string& mode_name,
                                        int64_t group_size, uintptr_t stream) {
  const TensorArg codes(codes_obj, "codes");
  const TensorArg scale(scale_obj, "scale");
  const std::optional<TensorArg> zero = optional_tensor(zero_obj, "zero");
  const std::optional<TensorArg> channels = optional_tensor(channels_obj, "channels");
  const TensorArg out(out_obj, "out");
  const Mode mode = parse_kv_mode(mode_name);
  check_group_size(group_size);
  const Backend backend = select_backend(out);
  out.expect_ndim(3, "[rows, tokens, channels]");
  const DType out_dtype = out.expect_float();
  const int64_t rows = out.size(0);
  const int64_t tokens = out.size(1);
  const ChannelMap map =
      check_channel_groups(out, channels, "the channels of out",
                           /*require_distinct=*/true, codes, scale, zero, mode, group_size);

  kv_quant::ChannelGroupDequantParams params;
  params.codes = static_cast<const uint8_t*>(codes.data());
  params.scale = static_cast<const float*>(scale.data());
  params.zero = zero ? static_cast<const float*>(zero->data()) : nullptr;
  params.channels = map.data;
  params.heads = map.heads;
  params.out = out.data();
  params.out_stride_row = out.stride(0);
  params.out_stride_token = out.stride(1);
  params.out_stride_channel = out.stride(2);
  params.out_dtype = out_dtype;
  params.rows = rows;
  params.tokens = tokens;
  params.out_channels = out.size(2);
  params.quantized_channels = map.count;
  params.group_size = group_size;
  params.mode = mode;
  params.device = out.device_id();
  VIDLLM_RUN_KERNEL(kv_quant, dequantize_channel_groups, params, backend, stream);
}

void kv_quant_quantize_token_groups(py::handle x_obj, py::handle codes_obj, py::handle scale_obj,
                                    py::handle zero_obj, int64_t group_size, uintptr_t stream) {
  const TensorArg x(x_obj, "x");
  const TensorArg codes(codes_obj, "codes");
  const TensorArg scale(scale_obj, "scale");
  const TensorArg zero(zero_obj, "zero");
  check_group_size(group_size);
  const Backend backend = select_backend(x);
  const DType dtype = check_x(x);
  const int64_t rows = x.size(0);
  const int64_t tokens = x.size(1);
  const int64_t channels = x.size(2);
  check_token_groups(x, codes, scale, zero, group_size);

  kv_quant::TokenGroupQuantParams params;
  params.x = x.data();
  params.x_stride_row = x.stride(0);
  params.x_stride_token = x.stride(1);
  params.dtype = dtype;
  params.codes = static_cast<uint8_t*>(codes.data());
  params.scale = static_cast<float*>(scale.data());
  params.zero = static_cast<float*>(zero.data());
  params.rows = rows;
  params.tokens = tokens;
  params.channels = channels;
  params.group_size = group_size;
  params.device = x.device_id();
  VIDLLM_RUN_KERNEL(kv_quant, quantize_token_groups, params, backend, stream);
}

void kv_quant_dequantize_token_groups(py::handle codes_obj, py::handle scale_obj,
                                      py::handle zero_obj, py::handle out_obj, int64_t group_size,
                                      uintptr_t stream) {
  const TensorArg codes(codes_obj, "codes");
  const TensorArg scale(scale_obj, "scale");
  const TensorArg zero(zero_obj, "zero");
  const TensorArg out(out_obj, "out");
  check_group_size(group_size);
  const Backend backend = select_backend(out);
  out.expect_ndim(3, "[rows, tokens, channels]");
  const DType out_dtype = out.expect_float();
  out.expect_dense();
  const int64_t rows = out.size(0);
  const int64_t tokens = out.size(1);
  const int64_t channels = out.size(2);
  check_token_groups(out, codes, scale, zero, group_size);

  kv_quant::TokenGroupDequantParams params;
  params.codes = static_cast<const uint8_t*>(codes.data());
  params.scale = static_cast<const float*>(scale.data());
  params.zero = static_cast<const float*>(zero.data());
  params.out = out.data();
  params.out_dtype = out_dtype;
  params.rows = rows;
  params.tokens = tokens;
  params.channels = channels;
  params.group_size = group_size;
  params.device = out.device_id();
  VIDLLM_RUN_KERNEL(kv_quant, dequantize_token_groups, params, backend, stream);
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
