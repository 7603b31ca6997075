// Bindings of packed attention (csrc/kv_attention): one segment's split-KV partials, and the
// combine step. The Python layer (vidllm_ext/ops/packed_attention.py) cuts a cache layer into
// segments; these entry points check every tensor of one call against the others.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

#include "dispatch.h"
#include "kv_attention/kv_attention.h"
#include "tensor_arg.h"

namespace py = pybind11;

namespace vidllm::binding {
namespace {

using kv_attention::KeyFormat;
using kv_attention::ScaleType;
using kv_attention::ValueFormat;

void expect_shape(const TensorArg& t, std::initializer_list<int64_t> sizes, const char* layout) {
  t.expect_ndim(static_cast<int>(sizes.size()), layout);
  int dim = 0;
  for (const int64_t size : sizes) t.expect_size(dim++, size, layout);
}

// A contiguous tensor of one dtype, shape and device.
void expect_buffer(const TensorArg& t, const TensorArg& primary, DLDataTypeCode code, int bits,
                   const char* dtype_name, std::initializer_list<int64_t> sizes,
                   const char* layout) {
  t.expect_same_device(primary);
  t.expect_dtype(code, bits, dtype_name);
  expect_shape(t, sizes, layout);
  t.expect_dense();
}

const TensorArg& required(const std::optional<TensorArg>& t, const char* name, const char* when) {
  if (!t) throw py::value_error(std::string(name) + ": expected a tensor " + when + ", got None");
  return *t;
}

ScaleType parse_scale_type(const std::string& name) {
  if (name == "float32") return ScaleType::kFloat32;
  if (name == "float16") return ScaleType::kFloat16;
  if (name == "bfloat16") return ScaleType::kBFloat16;
  if (name == "float8_e4m3fn") return ScaleType::kFloat8E4M3;
  throw py::value_error(
      "scale_type: expected 'float32', 'float16', 'bfloat16' or 'float8_e4m3fn', got '" + name +
      "'");
}

// Statistics arrive in their stored type; float8 as its raw bytes (uint8).
void expect_stats(const TensorArg& t, const TensorArg& primary, ScaleType type,
                  std::initializer_list<int64_t> sizes, const char* layout) {
  switch (type) {
    case ScaleType::kFloat32:
      return expect_buffer(t, primary, kDLFloat, 32, "float32", sizes, layout);
    case ScaleType::kFloat16:
      return expect_buffer(t, primary, kDLFloat, 16, "float16", sizes, layout);
    case ScaleType::kBFloat16:
      return expect_buffer(t, primary, kDLBfloat, 16, "bfloat16", sizes, layout);
    default:
      return expect_buffer(t, primary, kDLUInt, 8, "uint8 (float8_e4m3fn bytes)", sizes, layout);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_group(int64_t group_size, const char* name) {
  if (group_size < 1 || group_size > (int64_t{1} << 31))
    throw py::value_error(std::string(name) + ": expected an integer in [1, 2^31], got " +
                          std::to_string(group_size));
}

struct QueryShape {
  int64_t batch, q_heads, q_len, head_dim;
};

// A full-precision keys or values tensor t [B, Hkv, tokens, D] on primary's device, float with a
// contiguous last dimension (and, when `heads` is given, Hkv == heads): its dtype and strides
// into `source`.
template <typename Source>
void fill_full(Source& source, const TensorArg& t, const TensorArg& primary, const QueryShape& s,
               const char* layout, std::optional<int64_t> heads) {
  t.expect_same_device(primary);
  t.expect_ndim(4, layout);
  source.dtype = t.expect_float();
  t.expect_size(0, s.batch, layout);
  if (heads) t.expect_size(1, *heads, (std::string(layout) + " (Hkv of the keys)").c_str());
  t.expect_size(3, s.head_dim, layout);
  t.expect_last_dim_contiguous();
  source.stride_batch = t.stride(0);
  source.stride_head = t.stride(1);
  source.stride_token = t.stride(2);
}

void fill_keys(kv_attention::SegmentParams& p, const QueryShape& s, const TensorArg& primary,
               const std::string& format, const std::optional<TensorArg>& keys,
               const std::optional<TensorArg>& codes2, const std::optional<TensorArg>& scale2,
               const std::optional<TensorArg>& zero2, const std::optional<TensorArg>& codes1,
               const std::optional<TensorArg>& alpha1, int64_t group_size, ScaleType scale_type) {
  kv_attention::KeySource& k = p.keys;
  if (format == "full") {
    const TensorArg& t = required(keys, "keys", "for key_format 'full'");
    fill_full(k, t, primary, s, "[B, Hkv, tokens, D]", std::nullopt);
    p.q.kv_heads = t.size(1);
    k.format = KeyFormat::kFull;
    k.tokens = t.size(2);
    k.keys = t.data();
    return;
  }
  if (format != "packed")
    throw py::value_error("key_format: expected 'full' or 'packed', got '" + format + "'");
  check_group(group_size, "key_group_size");
  const TensorArg& c2 = required(codes2, "codes2", "for key_format 'packed'");
  const TensorArg& s2 = required(scale2, "scale2", "for key_format 'packed'");
  const TensorArg& z2 = required(zero2, "zero2", "for key_format 'packed'");
  const TensorArg& c1 = required(codes1, "codes1", "for key_format 'packed'");
  const TensorArg& a1 = required(alpha1, "alpha1", "for key_format 'packed'");
  c2.expect_ndim(4, "[B, Hkv, tokens, bytes]");
  s2.expect_ndim(4, "[B, Hkv, groups, D2]");
  a1.expect_ndim(4, "[B, Hkv, groups, D1]");
  const int64_t heads = c2.size(1);
  const int64_t tokens = c2.size(2);
  const int64_t groups = ceil_div(tokens, group_size);
  const int64_t two_bit = s2.size(3);
  const int64_t one_bit = a1.size(3);
  if (two_bit + one_bit != s.head_dim)
    throw py::value_error("scale2, alpha1: 2-bit and 1-bit key channels (" +
                          std::to_string(two_bit) + " + " + std::to_string(one_bit) +
                          ") must add up to head_dim " + std::to_string(s.head_dim));
  expect_buffer(c2, primary, kDLUInt, 8, "uint8", {s.batch, heads, tokens, ceil_div(two_bit, 4)},
                "[B, Hkv, tokens, ceil(D2 / 4)]");
  expect_buffer(c1, primary, kDLUInt, 8, "uint8", {s.batch, heads, tokens, ceil_div(one_bit, 8)},
                "[B, Hkv, tokens, ceil(D1 / 8)]");
  expect_stats(s2, primary, scale_type, {s.batch, heads, groups, two_bit}, "[B, Hkv, groups, D2]");
  expect_stats(z2, primary, scale_type, {s.batch, heads, groups, two_bit}, "[B, Hkv, groups, D2]");
  expect_stats(a1, primary, scale_type, {s.batch, heads, groups, one_bit}, "[B, Hkv, groups, D1]");
  p.q.kv_heads = heads;
  k.format = KeyFormat::kPacked;
  k.tokens = tokens;
  k.codes2 = static_cast<const uint8_t*>(c2.data());
  k.scale2 = s2.data();
  k.zero2 = z2.data();
  k.codes1 = static_cast<const uint8_t*>(c1.data());
  k.alpha1 = a1.data();
  k.two_bit = two_bit;
  k.one_bit = one_bit;
  k.group_size = group_size;
  k.scale_type = scale_type;
}

// Returns the segment's row count.
int64_t fill_values(kv_attention::SegmentParams& p, const QueryShape& s, const TensorArg& primary,
                    const std::string& format, const std::optional<TensorArg>& values,
                    const std::optional<TensorArg>& codes, const std::optional<TensorArg>& scale,
                    const std::optional<TensorArg>& zero, int64_t group_size,
                    ScaleType scale_type) {
  kv_attention::ValueSource& v = p.values;
  const int64_t heads = p.q.kv_heads;
  if (format == "full") {
    const TensorArg& t = required(values, "values", "for value_format 'full'");
    fill_full(v, t, primary, s, "[B, Hkv, rows, D]", heads);
    v.format = ValueFormat::kFull;
    v.values = t.data();
    return t.size(2);
  }
  const bool trits = format == "trit";
  if (format == "channel2") {
    v.format = ValueFormat::kChannel2;
  } else if (trits) {
    v.format = ValueFormat::kTrit;
  } else if (format == "token2") {
    v.format = ValueFormat::kToken2;
  } else {
    throw py::value_error("value_format: expected 'full', 'channel2', 'trit' or 'token2', got '" +
                          format + "'");
  }
  check_group(group_size, "value_group_size");
  const TensorArg& c = required(codes, "value_codes", "for packed values");
  const TensorArg& sc = required(scale, "value_scale", "for packed values");
  c.expect_ndim(4, "[B, Hkv, rows, bytes]");
  const int64_t rows = c.size(2);
  expect_buffer(c, primary, kDLUInt, 8, "uint8",
                {s.batch, heads, rows, kv_attention::value_code_bytes(s.head_dim, trits)},
                "[B, Hkv, rows, code bytes]");
  const bool token = v.format == ValueFormat::kToken2;
  const int64_t d2 = token ? rows : ceil_div(rows, group_size);
  const int64_t d3 = token ? ceil_div(s.head_dim, group_size) : s.head_dim;
  const char* layout = token ? "[B, Hkv, rows, channel groups]" : "[B, Hkv, groups, D]";
  expect_stats(sc, primary, scale_type, {s.batch, heads, d2, d3}, layout);
  if (trits) {
    if (zero) throw py::value_error("value_zero: expected None for value_format 'trit'");
  } else {
    expect_stats(required(zero, "value_zero", "for 2-bit values"), primary, scale_type,
                 {s.batch, heads, d2, d3}, layout);
    v.zero = zero->data();
  }
  v.codes = static_cast<const uint8_t*>(c.data());
  v.scale = sc.data();
  v.group_size = group_size;
  v.scale_type = scale_type;
  return rows;
}

void fill_rows(kv_attention::SegmentParams& p, const QueryShape& s, const TensorArg& primary,
               int64_t rows, const std::optional<TensorArg>& token_map, int64_t key_start) {
  kv_attention::Segment& seg = p.segment;
  seg.rows = rows;
  seg.key_start = key_start;
  if (!token_map) {
    if (key_start < 0 || key_start + rows > p.keys.tokens)
      throw py::value_error("key_start: rows [" + std::to_string(key_start) + ", " +
                            std::to_string(key_start + rows) + ") exceed the " +
                            std::to_string(p.keys.tokens) + " key tokens");
    return;
  }
  const TensorArg& m = *token_map;
  expect_buffer(m, primary, kDLInt, 64, "int64", {s.batch, rows}, "[B, rows]");
  seg.token_map = static_cast<const int64_t*>(m.data());
  if (m.is_cuda()) return;  // built by the Python layer from validated positions
  for (int64_t i = 0; i < s.batch * rows; ++i) {
    const int64_t token = seg.token_map[i];
    if (token < 0 || token >= p.keys.tokens)
      throw py::value_error("token_map: expected key tokens in [0, " +
                            std::to_string(p.keys.tokens) + "), got " + std::to_string(token));
  }
}

void kv_attention_segment(py::handle q_full_obj, py::handle q_packed_obj, int64_t query_start,
                          const std::string& key_format, py::handle keys_obj, py::handle codes2_obj,
                          py::handle scale2_obj, py::handle zero2_obj, py::handle codes1_obj,
                          py::handle alpha1_obj, int64_t key_group_size, int64_t key_position_start,
                          const std::string& value_format, py::handle values_obj,
                          py::handle value_codes_obj, py::handle value_scale_obj,
                          py::handle value_zero_obj, int64_t value_group_size,
                          const std::string& scale_type_name, py::handle token_map_obj,
                          int64_t key_start, int64_t split_rows, int64_t split_offset,
                          py::handle mask_obj, py::handle part_max_obj, py::handle part_sum_obj,
                          py::handle part_acc_obj, uintptr_t stream) {
  const std::optional<TensorArg> q_full = optional_tensor(q_full_obj, "q_full");
  const std::optional<TensorArg> q_packed = optional_tensor(q_packed_obj, "q_packed");
  const TensorArg part_max(part_max_obj, "part_max");
  const TensorArg part_sum(part_sum_obj, "part_sum");
  const TensorArg part_acc(part_acc_obj, "part_acc");
  const ScaleType scale_type = parse_scale_type(scale_type_name);
  const Launch launch = select_launch(part_max, stream);
  part_max.expect_ndim(4, "[B, Hq, Lq, splits]");
  part_acc.expect_ndim(5, "[B, Hq, Lq, splits, D]");
  const QueryShape s{part_max.size(0), part_max.size(1), part_max.size(2), part_acc.size(4)};
  const int64_t splits = part_max.size(3);
  const char* query_layout = "[B, Hq, Lq, D]";
  expect_buffer(part_max, part_max, kDLFloat, 32, "float32", {s.batch, s.q_heads, s.q_len, splits},
                "[B, Hq, Lq, splits]");
  expect_buffer(part_sum, part_max, kDLFloat, 32, "float32", {s.batch, s.q_heads, s.q_len, splits},
                "[B, Hq, Lq, splits]");
  expect_buffer(part_acc, part_max, kDLFloat, 32, "float32",
                {s.batch, s.q_heads, s.q_len, splits, s.head_dim}, "[B, Hq, Lq, splits, D]");
  for (const auto* q : {&q_full, &q_packed})
    if (*q)
      expect_buffer(**q, part_max, kDLFloat, 32, "float32",
                    {s.batch, s.q_heads, s.q_len, s.head_dim}, query_layout);

  kv_attention::SegmentParams p;
  p.q.full = q_full ? static_cast<const float*>(q_full->data()) : nullptr;
  p.q.packed = q_packed ? static_cast<const float*>(q_packed->data()) : nullptr;
  p.q.batch = s.batch;
  p.q.q_heads = s.q_heads;
  p.q.q_len = s.q_len;
  p.q.head_dim = s.head_dim;
  p.q.query_start = query_start;
  fill_keys(p, s, part_max, key_format, optional_tensor(keys_obj, "keys"),
            optional_tensor(codes2_obj, "codes2"), optional_tensor(scale2_obj, "scale2"),
            optional_tensor(zero2_obj, "zero2"), optional_tensor(codes1_obj, "codes1"),
            optional_tensor(alpha1_obj, "alpha1"), key_group_size, scale_type);
  if (p.q.kv_heads < 1 || s.q_heads % p.q.kv_heads != 0)
    throw py::value_error("query heads (" + std::to_string(s.q_heads) +
                          ") must be a multiple of the KV heads (" + std::to_string(p.q.kv_heads) +
                          ")");
  if (p.keys.format == KeyFormat::kPacked ? !q_packed : !q_full)
    throw py::value_error(p.keys.format == KeyFormat::kPacked
                              ? "q_packed: expected a tensor for packed keys, got None"
                              : "q_full: expected a tensor for full-precision keys, got None");
  p.keys.position_start = key_position_start;
  const int64_t rows =
      fill_values(p, s, part_max, value_format, optional_tensor(values_obj, "values"),
                  optional_tensor(value_codes_obj, "value_codes"),
                  optional_tensor(value_scale_obj, "value_scale"),
                  optional_tensor(value_zero_obj, "value_zero"), value_group_size, scale_type);
  const std::optional<TensorArg> token_map = optional_tensor(token_map_obj, "token_map");
  fill_rows(p, s, part_max, rows, token_map, key_start);
  if (split_rows < 1) throw py::value_error("split_rows: expected >= 1");
  if (split_offset < 0 || split_offset + ceil_div(rows, split_rows) > splits)
    throw py::value_error("split_offset: the segment's splits overflow the partials");
  p.segment.split_rows = split_rows;
  p.segment.split_offset = split_offset;
  if (query_start < 0) throw py::value_error("query_start: expected >= 0");

  const std::optional<TensorArg> mask = optional_tensor(mask_obj, "mask");
  if (mask) {
    mask->expect_same_device(part_max);
    mask->expect_bool();
    mask->expect_ndim(3, "[B, Lq, positions]");
    mask->expect_size(0, s.batch, "[B, Lq, positions]");
    mask->expect_size(1, s.q_len, "[B, Lq, positions]");
    if (mask->size(2) < key_position_start + p.keys.tokens)
      throw py::value_error("mask: covers " + std::to_string(mask->size(2)) +
                            " key positions, the segment reaches position " +
                            std::to_string(key_position_start + p.keys.tokens - 1));
    p.mask.data = static_cast<const uint8_t*>(mask->data());
    p.mask.stride_batch = mask->stride(0);
    p.mask.stride_query = mask->stride(1);
    p.mask.stride_key = mask->stride(2);
  }
  p.partials.max = static_cast<float*>(part_max.data());
  p.partials.sum = static_cast<float*>(part_sum.data());
  p.partials.acc = static_cast<float*>(part_acc.data());
  p.partials.splits = splits;
  if (rows == 0 || s.batch == 0) return;
  VIDLLM_RUN_KERNEL(kv_attention, segment_partials, p, launch);
}

void kv_attention_combine(py::handle part_max_obj, py::handle part_sum_obj, py::handle part_acc_obj,
                          py::handle out_obj, uintptr_t stream) {
  const TensorArg part_max(part_max_obj, "part_max");
  const TensorArg part_sum(part_sum_obj, "part_sum");
  const TensorArg part_acc(part_acc_obj, "part_acc");
  const TensorArg out(out_obj, "out");
  const Launch launch = select_launch(out, stream);
  out.expect_ndim(4, "[B, Hq, Lq, D]");
  const DType out_dtype = out.expect_float();
  out.expect_dense();
  const int64_t b = out.size(0), h = out.size(1), l = out.size(2), d = out.size(3);
  part_max.expect_ndim(4, "[B, Hq, Lq, splits]");
  const int64_t splits = part_max.size(3);
  if (splits < 1) throw py::value_error("part_max: expected at least one split");
  expect_buffer(part_max, out, kDLFloat, 32, "float32", {b, h, l, splits}, "[B, Hq, Lq, splits]");
  expect_buffer(part_sum, out, kDLFloat, 32, "float32", {b, h, l, splits}, "[B, Hq, Lq, splits]");
  expect_buffer(part_acc, out, kDLFloat, 32, "float32", {b, h, l, splits, d},
                "[B, Hq, Lq, splits, D]");
  kv_attention::CombineParams p;
  p.max = static_cast<const float*>(part_max.data());
  p.sum = static_cast<const float*>(part_sum.data());
  p.acc = static_cast<const float*>(part_acc.data());
  p.rows = b * h * l;
  p.splits = splits;
  p.head_dim = d;
  p.out = out.data();
  p.out_dtype = out_dtype;
  if (p.rows == 0 || d == 0) return;
  VIDLLM_RUN_KERNEL(kv_attention, combine_partials, p, launch);
}

}  // namespace

void register_kv_attention(py::module_& m) {
  m.def("kv_attention_segment", &kv_attention_segment, py::arg("q_full"), py::arg("q_packed"),
        py::arg("query_start"), py::arg("key_format"), py::arg("keys"), py::arg("codes2"),
        py::arg("scale2"), py::arg("zero2"), py::arg("codes1"), py::arg("alpha1"),
        py::arg("key_group_size"), py::arg("key_position_start"), py::arg("value_format"),
        py::arg("values"), py::arg("value_codes"), py::arg("value_scale"), py::arg("value_zero"),
        py::arg("value_group_size"), py::arg("scale_type"), py::arg("token_map"),
        py::arg("key_start"), py::arg("split_rows"), py::arg("split_offset"), py::arg("mask"),
        py::arg("part_max"), py::arg("part_sum"), py::arg("part_acc"), py::arg("stream") = 0,
        "Writes one cache segment's split-KV attention partials (max, sum, acc).");
  m.def("kv_attention_combine", &kv_attention_combine, py::arg("part_max"), py::arg("part_sum"),
        py::arg("part_acc"), py::arg("out"), py::arg("stream") = 0,
        "Merges the split-KV partials into out [B, Hq, Lq, D].");
}

}  // namespace vidllm::binding
