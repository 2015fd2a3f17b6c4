"""Triton kernels of the Lookaround update over flat ``[branches, N]`` buffers.

A program steps from one branch's row to the next by advancing its pointers by
the row stride (``N`` for weights and momentum, ``0`` or ``N`` for gradients,
whose rows may share memory), so no offset is ever formed as ``branch * N`` in
32-bit arithmetic; element offsets are int64 (the chunk table is int64), which
costs nothing measurable in a kernel bound by memory.

Math is done in fp32 for fp16/bf16/fp32 storage and in fp64 for fp64 storage,
with one rounding per store, as the eager backend does.
"""

import triton
import triton.language as tl


@triton.jit
def _round_to_bfloat16(x):
    """fp32 -> bf16 rounded to nearest even, as torch does.

    Done by hand because the interpreter's cast truncates. NaN is stored as
    0x7FC0: adding the rounding bias to a NaN such as the GPU's 0x7FFFFFFF
    would carry into the sign bit and store -0.
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """``x`` (math dtype) rounded once to the storage ``dtype``."""
    if dtype == tl.bfloat16:
        y = _round_to_bfloat16(x)
    else:
        y = x.to(dtype)
    return y


@triton.jit
def _fma(x, y, z, IN_FP64: tl.constexpr):
    """``x * y + z`` rounded once, as torch's ``add(alpha=)`` computes it on CPU and GPU.

    The interpreter evaluates ``tl.fma`` as two numpy operations; with ``IN_FP64``
    an fp32 product is formed exactly in fp64 instead (fp64 math stays two roundings).
    """
    if IN_FP64:
        r = (x.to(tl.float64) * y.to(tl.float64) + z.to(tl.float64)).to(z.dtype)
    else:
        r = tl.fma(x, y, z)
    return r


@triton.jit
def _divide(x, y):
    """``x / y`` rounded to nearest, as torch divides; Triton's fp32 ``/`` is approximate on a GPU."""
    if x.dtype == tl.float32:
        q = tl.math.div_rn(x, y)
    else:
        q = x / y
    return q


@triton.jit
def _load_math(pointers, mask):
    """Load and widen to the math dtype: fp64 stays fp64, every other dtype becomes fp32."""
    x = tl.load(pointers, mask=mask)
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    return x


# Triton specialises integer arguments equal to 1 (into constants) or divisible by 16.
# The branch range changes every call in the drop-in style and must not compile new
# variants; strides and sizes get their divisibility from ALIGNMENT instead, and
# tl.multiple_of needs them to stay tensors.
@triton.jit(do_not_specialize=["row_stride", "grad_row_stride", "branch_start", "branch_stop"])
def lookaround_step_kernel(
    weights_ptr, grads_ptr, momentum_ptr,
    tiles_ptr, param_group_ptr, hyper_ptr, hyper_stride,
    has_grad_ptr, momentum_ready_ptr, num_params, row_stride, grad_row_stride,
    grad_scale_ptr, found_inf_ptr, average_ptr,
    branch_start, branch_stop,
    NUM_BRANCHES: tl.constexpr, BLOCK: tl.constexpr, ALIGNMENT: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, FMA_IN_FP64: tl.constexpr,
):
    """SGD step of branches ``[branch_start, branch_stop)`` and optional average, one tile per program.

    A tile is a row ``(start, length, param)`` of the chunk table: a run of at
    most ``BLOCK`` elements of one parameter, handled here for every branch.
    Each branch's weights are read once; when the average flag is set, the
    updated weights of all branches are summed left to right and the mean is
    stored to every branch instead of the update. Hyperparameters, the gradient
    scale, ``found_inf`` and the average flag come from device memory, so new
    values never recompile the kernel. ``momentum_ptr`` is not read unless
    ``HAS_MOMENTUM``, and then only for parameters whose group has momentum.
    ``ALIGNMENT`` divides every tile start and length and both row strides;
    without that promise the compiler cannot use vector loads.
    """
    tile = tiles_ptr + tl.program_id(0).to(tl.int64) * 3
    start = tl.multiple_of(tl.load(tile), ALIGNMENT)
    length = tl.multiple_of(tl.load(tile + 1), ALIGNMENT)
    param = tl.load(tile + 2)
    row_stride = tl.multiple_of(row_stride, ALIGNMENT)
    grad_row_stride = tl.multiple_of(grad_row_stride, ALIGNMENT)
    lanes = tl.arange(0, BLOCK)
    in_tile = lanes < length
    offsets = start + lanes

    # Columns follow lookaround_fused.flat.HYPERPARAMETERS, in the math dtype.
    hyper = hyper_ptr + tl.load(param_group_ptr + param) * hyper_stride
    lr = tl.load(hyper)
    momentum = tl.load(hyper + 1)
    dampening = tl.load(hyper + 2)
    weight_decay = tl.load(hyper + 3)
    nesterov = tl.load(hyper + 4) != 0
    maximize = tl.load(hyper + 5) != 0

    proceed = tl.load(found_inf_ptr) == 0
    averaging = (tl.load(average_ptr) != 0) & proceed
    math_dtype = lr.dtype
    grad_scale = tl.load(grad_scale_ptr).to(math_dtype)

    w_ptrs = weights_ptr + offsets
    g_ptrs = grads_ptr + offsets
    m_ptrs = momentum_ptr + offsets
    for b in tl.static_range(NUM_BRANCHES):
        flag = num_params * b + param
        updating = (branch_start <= b) & (branch_stop > b) & (tl.load(has_grad_ptr + flag) != 0) & proceed
        # Masked-off loads move no memory: a branch is read only when it is updated or averaged.
        w = tl.load(w_ptrs, mask=in_tile & (updating | averaging)).to(math_dtype)
        g = _divide(tl.load(g_ptrs, mask=in_tile & updating).to(math_dtype), grad_scale)
        g = tl.where(maximize, -g, g)
        g = tl.where(weight_decay != 0, _fma(w, weight_decay, g, FMA_IN_FP64), g)
        if HAS_MOMENTUM:
            uses_momentum = updating & (momentum != 0)
            ready = tl.load(momentum_ready_ptr + flag) != 0
            m = tl.load(m_ptrs, mask=in_tile & uses_momentum & ready).to(math_dtype)
            m = tl.where(ready, _fma(g, 1 - dampening, momentum * m, FMA_IN_FP64), g)
            tl.store(m_ptrs, _round_to(m, m_ptrs.dtype.element_ty), mask=in_tile & uses_momentum)
            g = tl.where(momentum != 0, tl.where(nesterov, _fma(m, momentum, g, FMA_IN_FP64), m), g)
            m_ptrs += row_stride
        stored = _round_to(_fma(g, -lr, w, FMA_IN_FP64), w_ptrs.dtype.element_ty)
        tl.store(w_ptrs, stored, mask=in_tile & updating & ~averaging)
        # The mean is taken over the weights as stored, like the eager backend's.
        w = tl.where(updating, stored.to(math_dtype), w)
        if b == 0:
            total = w
        else:
            total += w
        w_ptrs += row_stride
        g_ptrs += grad_row_stride

    mean = _round_to(_divide(total, NUM_BRANCHES), weights_ptr.dtype.element_ty)
    w_ptrs = weights_ptr + offsets
    for _ in tl.static_range(NUM_BRANCHES):
        tl.store(w_ptrs, mean, mask=in_tile & averaging)
        w_ptrs += row_stride


@triton.jit(do_not_specialize=["numel", "row_stride"])
def lookaround_mean_kernel(weights_ptr, out_ptr, numel, row_stride,
                           NUM_BRANCHES: tl.constexpr, BLOCK: tl.constexpr, ALIGNMENT: tl.constexpr):
    """``out = (w_0 + ... + w_{d-1}) / d`` over ``BLOCK`` columns per program, summed left to right.

    ``ALIGNMENT`` divides ``numel`` and ``row_stride``.
    """
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < tl.multiple_of(numel, ALIGNMENT)
    row_stride = tl.multiple_of(row_stride, ALIGNMENT)
    w_ptrs = weights_ptr + offsets
    for b in tl.static_range(NUM_BRANCHES):
        w = _load_math(w_ptrs, in_range)
        if b == 0:
            total = w
        else:
            total += w
        w_ptrs += row_stride
    tl.store(out_ptr + offsets, _round_to(_divide(total, NUM_BRANCHES), out_ptr.dtype.element_ty), mask=in_range)
