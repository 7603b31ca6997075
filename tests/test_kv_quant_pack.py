"""Packing ops (vidllm_ext.ops.pack_bits & co.) against the reference and DESIGN.md's layouts."""

import re

import numpy as np
import pytest
import torch
from conftest import DEVICES

from vidllm_ext import _C, ops, reference
from vidllm_ext.ops._backend import dl, stream_of

LEADING = [(), (3,), (2, 5), (0, 4)]
LENGTHS = [0, 1, 7, 8, 9, 37, 40, 257]
PER_BYTE = {"bits1": 8, "bits2": 4, "trits": 5}


def random_codes(shape, bits, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, shape, generator=generator, dtype=torch.uint8).to(device)


def random_trits(shape, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, shape, generator=generator, dtype=torch.int8).to(device)


def packed_size(n, per_byte):
    return -(-n // per_byte)


@pytest.mark.parametrize("device", DEVICES)
def test_layouts_match_design_doc(device):
    bits1 = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8, device=device)
    assert ops.pack_bits(bits1, 1).tolist() == [0b00001101, 0b00000001]
    bits2 = torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8, device=device)
    assert ops.pack_bits(bits2, 2).tolist() == [1 | 2 << 2 | 3 << 4 | 0 << 6, 3]
    trits = torch.tensor([-1, 0, 1, 1, -1, 1], dtype=torch.int8, device=device)
    # byte 0: digits (t + 1) = 0, 1, 2, 2, 0; byte 1: digit 2, then four padding digits 1 (t = 0)
    assert ops.pack_trits(trits).tolist() == [
        0 + 1 * 3 + 2 * 9 + 2 * 27 + 0 * 81,
        2 + 3 + 9 + 27 + 81,
    ]
    all_ones = torch.ones(5, dtype=torch.int8, device=device)
    assert ops.pack_trits(all_ones).tolist() == [242]
    assert (
        ops.unpack_trits(torch.tensor([242], dtype=torch.uint8, device=device), 5).tolist()
        == [1] * 5
    )


@pytest.mark.parametrize("device", DEVICES)
def test_one_bit_layout_is_little_endian_packbits(device):
    codes = random_codes((5, 37), 1, "cpu", seed=1)
    expected = np.packbits(codes.numpy(), axis=-1, bitorder="little")
    assert np.array_equal(ops.pack_bits(codes.to(device), 1).cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("n", LENGTHS)
def test_bits_match_reference_and_round_trip(device, bits, leading, n):
    codes = random_codes((*leading, n), bits, device, seed=n)
    packed = ops.pack_bits(codes, bits)
    expected = reference.pack_bits(codes.cpu(), bits)
    assert packed.dtype == torch.uint8 and packed.device == codes.device
    assert packed.shape == (*leading, packed_size(n * bits, 8))
    assert torch.equal(packed.cpu(), expected)
    unpacked = ops.unpack_bits(packed, bits, n)
    assert unpacked.dtype == torch.uint8 and torch.equal(unpacked, codes)
    assert torch.equal(reference.unpack_bits(expected, bits, n), codes.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("n", LENGTHS)
def test_trits_match_reference_and_round_trip(device, leading, n):
    trits = random_trits((*leading, n), device, seed=n)
    packed = ops.pack_trits(trits)
    expected = reference.pack_trits(trits.cpu())
    assert packed.shape == (*leading, packed_size(n, 5))
    assert torch.equal(packed.cpu(), expected)
    assert (expected <= 242).all()
    unpacked = ops.unpack_trits(packed, n)
    assert unpacked.dtype == torch.int8 and torch.equal(unpacked, trits)
    assert torch.equal(reference.unpack_trits(expected, n), trits.cpu())


def strided_views(tensor):
    """Non-contiguous views of a [rows, n] tensor (same values, except for "expanded")."""
    wider = torch.cat([tensor[:, :3], tensor, tensor[:, :2]], dim=1)
    return {
        "transposed": tensor.t().contiguous().t(),
        "row_slice": wider[:, 3 : 3 + tensor.shape[1]],  # row stride n + 5, offset 3
        "every_other_row": torch.repeat_interleave(tensor, 2, dim=0)[::2],
        "last_dim_stride": torch.repeat_interleave(tensor, 2, dim=1)[:, ::2],
        "expanded": tensor[:1].expand(tensor.shape[0], -1),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["bits1", "bits2", "trits"])
def test_non_contiguous_inputs(device, layout):
    if layout == "trits":
        base = random_trits((9, 23), device, seed=3)
    else:
        base = random_codes((9, 23), int(layout[-1]), device, seed=3)
    for name, codes in strided_views(base).items():
        if layout == "trits":
            packed, expected = ops.pack_trits(codes), reference.pack_trits(codes.cpu())
        else:
            bits = int(layout[-1])
            packed, expected = ops.pack_bits(codes, bits), reference.pack_bits(codes.cpu(), bits)
        assert torch.equal(packed.cpu(), expected), name
    if layout == "trits":
        packed = reference.pack_trits(base.cpu())
    else:
        packed = reference.pack_bits(base.cpu(), int(layout[-1]))
    for name, view in strided_views(packed.to(device)).items():
        if layout == "trits":
            actual, expected = ops.unpack_trits(view, 23), reference.unpack_trits(view.cpu(), 23)
        else:
            bits = int(layout[-1])
            actual = ops.unpack_bits(view, bits, 23)
            expected = reference.unpack_bits(view.cpu(), bits, 23)
        assert torch.equal(actual.cpu(), expected), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["bits1", "bits2", "trits"])
@pytest.mark.parametrize("rows,multiple", [(1, 1), (37, 2), (1000, 16), (3, 1000)])
def test_unpadded_streams_with_tails_and_offsets(device, layout, rows, multiple):
    """Rows of whole bytes form one byte stream (the CUDA kernels' vector path): lengths with
    and without a 16-byte tail, and views starting off the 16-byte alignment."""
    n = PER_BYTE[layout] * multiple
    shape = (rows + 1, n)
    if layout == "trits":
        full = random_trits(shape, device, seed=rows)
        pack, unpack = ops.pack_trits, lambda p: ops.unpack_trits(p, n)
        ref_pack = reference.pack_trits
    else:
        bits = int(layout[-1])
        full = random_codes(shape, bits, device, seed=rows)
        pack, unpack = (lambda c: ops.pack_bits(c, bits)), lambda p: ops.unpack_bits(p, bits, n)
        ref_pack = lambda c: reference.pack_bits(c, bits)  # noqa: E731
    for codes in (full[:rows], full[1:]):  # the second starts n bytes in: misaligned for most n
        packed = pack(codes)
        assert torch.equal(packed.cpu(), ref_pack(codes.cpu()))
        assert torch.equal(unpack(packed), codes)
        assert torch.equal(unpack(torch.cat([packed[:1], packed])[1:]), codes)


@pytest.mark.parametrize("device", DEVICES)
def test_long_single_row_spans_many_work_items(device):
    codes = random_codes((1, 100_003), 1, device, seed=4)
    packed = ops.pack_bits(codes, 1)
    assert torch.equal(packed.cpu(), reference.pack_bits(codes.cpu(), 1))
    assert torch.equal(ops.unpack_bits(packed, 1, 100_003), codes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [1, 2])
def test_codes_out_of_range_raise_with_count_and_first(device, bits):
    codes = random_codes((4, 50), bits, "cpu", seed=5)
    codes[1, 7] = 2**bits + 3
    codes[0, 49] = 255
    codes[3, 0] = 2**bits
    message = (
        f"codes: 3 codes are outside [0, {2**bits}) for bits={bits}; the first is 255 at [0, 49]"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        ops.pack_bits(codes.to(device), bits)
    with pytest.raises(ValueError, match=re.escape(message)):
        reference.pack_bits(codes, bits)


@pytest.mark.parametrize("device", DEVICES)
def test_trits_out_of_range_raise_with_count_and_first(device):
    trits = random_trits((3, 41), "cpu", seed=6)
    trits[0, 40], trits[2, 3], trits[2, 4] = 2, -2, -128
    message = "trits: 3 values are not in {-1, 0, 1}; the first is 2 at [0, 40]"
    with pytest.raises(ValueError, match=re.escape(message)):
        ops.pack_trits(trits.to(device))
    with pytest.raises(ValueError, match=re.escape(message)):
        reference.pack_trits(trits)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [1, 2])
def test_non_zero_padding_bits_raise(device, bits):
    n = 13  # 1-bit: 3 padding bits; 2-bit: 3 padding codes
    packed = reference.pack_bits(random_codes((5, n), bits, "cpu", seed=7), bits)
    ops.unpack_bits(packed.to(device), bits, n)  # valid as packed
    packed[1, -1] |= 0x80
    packed[4, -1] |= 0x80
    message = f"packed: 2 invalid bytes for n={n} (padding bits must be zero)"
    with pytest.raises(ValueError, match=re.escape(message)):
        ops.unpack_bits(packed.to(device), bits, n)
    with pytest.raises(ValueError, match=re.escape(message)):
        reference.unpack_bits(packed, bits, n)


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_trit_bytes_raise(device):
    n = 12  # two full bytes and two trits in the third
    packed = reference.pack_trits(random_trits((4, n), "cpu", seed=8))
    packed[0, 1] = 243
    packed[2, 0] = 255
    packed[3, 2] = 0  # padding trits 2..4 decode as -1, not 0
    message = f"packed: 3 invalid bytes for n={n}"
    with pytest.raises(ValueError, match=re.escape(message) + ".*the first is 243 at \\[0, 1\\]"):
        ops.unpack_trits(packed.to(device), n)
    with pytest.raises(ValueError, match=re.escape(message)):
        reference.unpack_trits(packed, n)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["bits1", "bits2", "trits"])
def test_kernels_overwrite_poisoned_outputs_and_counter(device, layout):
    """The binding directly: outputs filled with 0xAB / -7 first; the counter is overwritten."""
    n = 29
    if layout == "trits":
        codes = random_trits((6, n), device, seed=9)
        expected = reference.pack_trits(codes.cpu())
    else:
        codes = random_codes((6, n), int(layout[-1]), device, seed=9)
        expected = reference.pack_bits(codes.cpu(), int(layout[-1]))
    packed = torch.full(expected.shape, 0xAB, dtype=torch.uint8, device=device)
    invalid = torch.full((1,), -7, dtype=torch.int64, device=device)
    _C.kv_quant_pack(dl(codes), dl(packed), dl(invalid), layout, stream_of(codes))
    assert torch.equal(packed.cpu(), expected) and invalid.item() == 0
    unpacked = torch.full_like(codes, 0x55)
    invalid.fill_(-7)
    _C.kv_quant_unpack(dl(packed), dl(unpacked), dl(invalid), layout, stream_of(codes))
    assert torch.equal(unpacked, codes) and invalid.item() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    for shape in [(0,), (4, 0), (0, 9), (2, 0, 3)]:
        codes = torch.zeros(shape, dtype=torch.uint8, device=device)
        packed = ops.pack_bits(codes, 2)
        assert packed.shape == (*shape[:-1], packed_size(shape[-1], 4))
        assert ops.unpack_bits(packed, 2, shape[-1]).shape == shape
        trits = torch.zeros(shape, dtype=torch.int8, device=device)
        assert ops.unpack_trits(ops.pack_trits(trits), shape[-1]).shape == shape


def test_opcheck_pack_ops():
    codes = random_codes((3, 4, 21), 2, "cpu", seed=10)
    trits = random_trits((5, 13), "cpu", seed=11)
    torch.library.opcheck(torch.ops.vidllm.pack_bits.default, (codes, 2))
    torch.library.opcheck(torch.ops.vidllm.pack_bits.default, (codes % 2, 1))
    torch.library.opcheck(torch.ops.vidllm.unpack_bits.default, (ops.pack_bits(codes, 2), 2, 21))
    torch.library.opcheck(torch.ops.vidllm.pack_trits.default, (trits,))
    torch.library.opcheck(torch.ops.vidllm.unpack_trits.default, (ops.pack_trits(trits), 13))


def round_trips(codes, trits):
    packed = ops.pack_bits(codes, 2)
    packed_trits = ops.pack_trits(trits)
    return (
        packed,
        ops.unpack_bits(packed, 2, codes.shape[-1]) + 1,
        ops.unpack_trits(packed_trits, trits.shape[-1]) * 2,
    )


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    codes = random_codes((4, 37), 2, "cpu", seed=12)
    trits = random_trits((4, 37), "cpu", seed=13)
    compiled = torch.compile(round_trips, fullgraph=True)
    for actual, expected in zip(compiled(codes, trits), round_trips(codes, trits)):
        assert torch.equal(actual, expected)
