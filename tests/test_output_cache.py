"""The output cache: a block freed by one of fastnorm's outputs serves its next
output of the same size, and never while anything still refers to it.

fastnorm allocates its outputs of 1 MiB and more through a NumPy memory handler
(src/_output_cache.pyx) that keeps freed blocks, so that a call does not fault
its output's pages in afresh. What must hold: a cached block is handed out only
after its array (and every view of it) is gone, the values are the call's own,
the cache keeps to its limits, and NumPy's other arrays never go through it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import _output_cache, reference

MIB = 1 << 20
LINE = 64   # bytes of a cache line


@pytest.fixture(autouse=True)
def empty_cache():
    """Each test starts from an empty cache of the default capacity and leaves one."""
    fn.set_output_cache(0)
    fn.set_output_cache(_output_cache.DEFAULT_CAPACITY)
    yield
    fn.set_output_cache(0)
    fn.set_output_cache(_output_cache.DEFAULT_CAPACITY)


def _inputs(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    gamma = rng.standard_normal(shape[-1]).astype(dtype)
    beta = rng.standard_normal(shape[-1]).astype(dtype)
    return x, gamma, beta


def _address(a):
    return a.__array_interface__["data"][0]


def test_a_freed_output_block_serves_the_next_output_of_its_size():
    x, gamma, beta = _inputs((512, 512))            # 2 MiB of float64
    out, _ = fn.layernorm_forward(x, gamma, beta, {})
    first = _address(out)
    del out
    assert fn.output_cache_info()["held_bytes"] == 2 * MIB
    hits = fn.output_cache_info()["hits"]
    again, _ = fn.layernorm_forward(x, gamma, beta, {})
    assert _address(again) == first
    assert fn.output_cache_info()["hits"] == hits + 1
    assert fn.output_cache_info()["held_bytes"] == 0


def test_a_reused_block_holds_the_new_call_values():
    x, gamma, beta = _inputs((512, 512))
    out, _ = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    del out
    y = x[::-1].copy() * 0.5 - 1.0
    out, cache = fn.batchnorm_forward(y, gamma, beta, {"mode": "train"})
    want, _ = reference.batchnorm_forward(y, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    dout = np.random.default_rng(1).standard_normal(y.shape)
    dx, dgamma, dbeta = fn.batchnorm_backward(dout, cache)
    del dx
    dx, _, _ = fn.batchnorm_backward(dout * 2.0, cache)
    want_dx, _, _ = reference.batchnorm_backward_alt(dout * 2.0, reference.batchnorm_forward(
        y, gamma, beta, {"mode": "train"})[1])
    np.testing.assert_allclose(dx, want_dx, rtol=1e-9, atol=1e-12)


def test_a_live_output_or_a_view_of_it_keeps_its_block():
    x, gamma, beta = _inputs((512, 512))
    kept, _ = fn.layernorm_forward(x, gamma, beta, {})
    snapshot = kept.copy()
    other, _ = fn.layernorm_forward(x * 3.0, gamma, beta, {})
    assert _address(other) != _address(kept)
    view = other[100:200]
    view_values = view.copy()
    del other   # its block stays with the view
    assert fn.output_cache_info()["blocks"] == 0
    third, _ = fn.layernorm_forward(x - 7.0, gamma, beta, {})
    assert _address(third) not in (_address(kept), _address(view) - 100 * 512 * 8)
    np.testing.assert_array_equal(kept, snapshot)
    np.testing.assert_array_equal(view, view_values)


def test_every_op_allocates_its_large_outputs_through_the_cache():
    rng = np.random.default_rng(2)
    x4 = rng.standard_normal((8, 16, 32, 32))   # 1 MiB of float64
    x_cl = np.ascontiguousarray(x4.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    dout = rng.standard_normal(x4.shape)
    g, b = np.ones(16), np.zeros(16)
    g4, b4 = g.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1)
    ops = [
        (lambda: fn.batchnorm_forward(x4.reshape(-1, 64), np.ones(64), np.zeros(64),
                                      {"mode": "train"}), fn.batchnorm_backward),
        (lambda: fn.layernorm_forward(x4, np.ones(32), np.zeros(32), {}), fn.layernorm_backward),
        (lambda: fn.spatial_batchnorm_forward(x4, g, b, {"mode": "train"}),
         fn.spatial_batchnorm_backward),
        (lambda: fn.spatial_batchnorm_forward(x_cl, g, b, {"mode": "train"}),
         fn.spatial_batchnorm_backward),
        (lambda: fn.spatial_groupnorm_forward(x4, g4, b4, 4, {}), fn.spatial_groupnorm_backward),
        (lambda: fn.rmsnorm_forward(x4, np.ones(32), {}), fn.rmsnorm_backward),
    ]
    for forward, backward in ops:
        before = fn.output_cache_info()
        out, cache = forward()
        del out
        dx = backward(dout.reshape(cache.x.shape) if hasattr(cache, "x") else dout, cache)[0]
        del dx
        after = fn.output_cache_info()
        takes = after["hits"] + after["misses"] - before["hits"] - before["misses"]
        assert takes == 2, forward   # out and dx
        assert (after["blocks"], after["held_bytes"]) == (1, MIB)   # one block serves all


def test_small_outputs_and_numpy_arrays_do_not_use_it():
    before = fn.output_cache_info()
    x, gamma, beta = _inputs((64, 64))   # 32 KiB
    out, _ = fn.layernorm_forward(x, gamma, beta, {})
    del out
    big = np.empty(4 * MIB)
    del big
    info = fn.output_cache_info()
    assert (info["hits"], info["misses"], info["blocks"]) == (before["hits"], before["misses"], 0)


def test_the_cache_keeps_to_its_capacity_and_block_count():
    fn.set_output_cache(5 * MIB)
    outs = [_output_cache.new_output((2 * MIB // 8,), np.float64) for _ in range(4)]
    del outs
    info = fn.output_cache_info()
    assert info["held_bytes"] == 4 * MIB and info["blocks"] == 2   # the newest two fit
    fn.set_output_cache(1 << 30)
    outs = [_output_cache.new_output(((k + 1) * MIB // 8,), np.float64) for k in range(12)]
    for k in range(12):   # freed in order: 1 MiB first
        outs[k] = None
    info = fn.output_cache_info()
    assert info["blocks"] == info["max_blocks"] == 8
    assert info["held_bytes"] == sum(range(5, 13)) * MIB   # the last eight freed
    assert fn.set_output_cache(3 * MIB) == 1 << 30
    info = fn.output_cache_info()
    assert info["held_bytes"] <= 3 * MIB
    assert fn.set_output_cache(0) == 3 * MIB
    assert fn.output_cache_info()["held_bytes"] == 0
    out = _output_cache.new_output((MIB // 8,), np.float64)
    del out
    assert fn.output_cache_info()["blocks"] == 0   # capacity 0: nothing is kept


def test_a_cached_output_resizes_like_any_array():
    out = _output_cache.new_output((MIB // 8,), np.float64)
    out[:] = np.arange(out.size)
    out.resize(3 * MIB // 8, refcheck=False)   # the handler's realloc
    np.testing.assert_array_equal(out[:MIB // 8], np.arange(MIB // 8))
    assert out.ctypes.data % LINE == 0
    del out
    assert fn.output_cache_info()["held_bytes"] == 3 * MIB


@pytest.mark.parametrize("sizes", [(100, 3), (3, 100), (MIB // 8, 100), (100, MIB // 8),
                                   (MIB // 8, 3 * MIB // 8), (4096, 3), (3, 4096), (4096, 2000)])
def test_a_resized_output_keeps_its_values_on_a_cache_line(sizes):
    """realloc moves the data onto the new block's line boundary, wherever base's
    realloc puts the block: growing, shrinking, across the cached size and across
    the size from which a block has room to start anywhere in its page (16 KiB)."""
    before, after = sizes
    out = _output_cache.new_output((before,), np.float64)
    out[:] = np.arange(before)
    out.resize(after, refcheck=False)
    assert out.ctypes.data % LINE == 0
    kept = min(before, after)
    np.testing.assert_array_equal(out[:kept], np.arange(kept))


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (1000,), (MIB // 8,), (3, MIB // 8)])
def test_outputs_start_on_a_cache_line(shape):
    """The C library starts its large blocks 16 bytes past a line; fastnorm's outputs
    start on one, fresh or taken from the cache, with the same values."""
    for _ in range(2):   # the second is the first's block, where cached
        out = _output_cache.new_output(shape, np.float32)
        assert out.ctypes.data % LINE == 0
        out[...] = 7.0
        assert np.all(out == 7.0)
        del out


def test_the_public_calls_outputs_start_on_a_cache_line():
    x, gamma, beta = _inputs((512, 1024))
    ln_out, cache = fn.layernorm_forward(x, gamma, beta, {})
    ln_dx, _, _ = fn.layernorm_backward(np.ones_like(x), cache)
    bn_out, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    bn_dx, _, _ = fn.batchnorm_backward(np.ones_like(x), cache)
    x4 = x.reshape(8, 64, 32, 32)
    gn_out, _ = fn.spatial_groupnorm_forward(x4, np.ones((1, 64, 1, 1)), np.zeros((1, 64, 1, 1)),
                                             8, {})
    for a in (ln_out, ln_dx, bn_out, bn_dx, gn_out):
        assert a.ctypes.data % LINE == 0


PAGE = 4096
ALIASED = 256   # bytes past an input, in its page, where an output's stores held up its loads


def _page_distance(out, near):
    """How far out's data starts, around the page, from ALIASED bytes past near's."""
    d = (_address(out) - _address(near) - ALIASED) % PAGE
    return min(d, PAGE - d)


def _at_page_offset(like, offset):
    """A copy of like whose data starts `offset` bytes into a page."""
    raw = np.empty(like.nbytes + 2 * PAGE, np.uint8)
    start = (offset - _address(raw)) % PAGE
    a = raw[start:start + like.nbytes].view(like.dtype).reshape(like.shape)
    a[...] = like
    return a


@pytest.mark.parametrize("shape", [(256, 512), (16, 256)])   # through the cache, and not
@pytest.mark.parametrize("offset", [0, 16, 64, 1024, 2048, 3968, 4080])
def test_an_output_starts_in_its_page_away_from_its_input(shape, offset):
    """Stores into out held up the loads of x a little ahead when out started 48-256
    bytes past x modulo 4 KiB (4K aliasing): an output starts half a page from there,
    to a line, fresh or taken from the cache, and holds the call's values."""
    x, gamma, beta = _inputs(shape)
    x = _at_page_offset(x, offset)
    calls = {"layer norm": lambda **out: fn.layernorm_forward(x, gamma, beta, {}, **out)[0],
             "batch norm": lambda **out: fn.batchnorm_forward(x, gamma, beta, {"mode": "train"},
                                                              **out)[0]}
    for name, call in calls.items():
        want = call(out=np.empty_like(x))
        for _ in range(2):   # the second takes the first's block where it is cached
            out = call()
            assert out.ctypes.data % LINE == 0, name
            assert _page_distance(out, x) >= PAGE // 2 - LINE, name
            np.testing.assert_array_equal(out, want, err_msg=name)
            del out


@pytest.mark.parametrize("offsets", [(0, 0), (0, 2048), (16, 1040), (3000, 200), (4080, 64)])
def test_dx_starts_in_its_page_away_from_dout_and_x(offsets):
    """With two inputs the output is placed for the nearer of them: at least a quarter
    of a page from where either would alias (two half-page rules can't both hold)."""
    x, gamma, beta = _inputs((256, 512))
    x = _at_page_offset(x, offsets[0])
    dout = _at_page_offset(np.random.default_rng(3).standard_normal(x.shape), offsets[1])
    _, cache = fn.layernorm_forward(x, gamma, beta, {})
    want = fn.layernorm_backward(dout, cache, out=(np.empty_like(x), np.empty(512), np.empty(512)))[0]
    dx = fn.layernorm_backward(dout, cache)[0]
    assert min(_page_distance(dx, dout), _page_distance(dx, x)) >= PAGE // 4 - LINE
    np.testing.assert_array_equal(dx, want)


def test_every_op_places_its_outputs_away_from_what_it_reads():
    rng = np.random.default_rng(4)
    x4 = _at_page_offset(rng.standard_normal((8, 16, 32, 32)), 48)
    x_cl = np.ascontiguousarray(x4.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    dout = _at_page_offset(rng.standard_normal(x4.shape), 112)
    dout_cl = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g, b = np.ones(16), np.zeros(16)
    g4, b4 = g.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1)
    ops = {
        "spatial batch norm": (lambda: fn.spatial_batchnorm_forward(x4, g, b, {"mode": "train"}),
                               fn.spatial_batchnorm_backward, x4, dout),
        "channels-last": (lambda: fn.spatial_batchnorm_forward(x_cl, g, b, {"mode": "train"}),
                          fn.spatial_batchnorm_backward, x_cl, dout_cl),
        "group norm": (lambda: fn.spatial_groupnorm_forward(x4, g4, b4, 4, {}),
                       fn.spatial_groupnorm_backward, x4, dout),
        "rms norm": (lambda: fn.rmsnorm_forward(x4, np.ones(32), {}), fn.rmsnorm_backward, x4, dout),
    }
    for name, (forward, backward, x, d) in ops.items():
        out, cache = forward()
        assert _page_distance(out, x) >= PAGE // 2 - LINE, name
        dx = backward(d, cache)[0]
        assert min(_page_distance(dx, x), _page_distance(dx, d)) >= PAGE // 4 - LINE, name


@pytest.mark.parametrize("bad", [-1, -(1 << 40)])
def test_a_negative_capacity_is_refused(bad):
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        fn.set_output_cache(bad)
    assert fn.output_cache_info()["capacity"] == _output_cache.DEFAULT_CAPACITY


def test_threads_allocating_and_freeing_at_once_get_their_own_blocks():
    x, gamma, beta = _inputs((256, 1024))   # 2 MiB
    want, _ = fn.layernorm_forward(x, gamma, beta, {})
    failures = []

    def work(seed):
        scale = 1.0 + seed
        expect = fn.layernorm_forward(x * scale, gamma, beta, {})[0]
        for _ in range(20):
            out, _ = fn.layernorm_forward(x * scale, gamma, beta, {})
            if not np.array_equal(out, expect):
                failures.append(seed)
            del out

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    np.testing.assert_array_equal(fn.layernorm_forward(x, gamma, beta, {})[0], want)
    assert fn.output_cache_info()["blocks"] <= 8
