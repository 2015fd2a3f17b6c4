// The per-element arithmetic of one torch.optim.SGD step, shared by the CPU and CUDA kernels.
//
// Every operation mirrors what the eager backend's PyTorch ops compute, in the same order:
// PyTorch evaluates `a.add(b, alpha=s)` as fma(b, s, a) on CPUs with FMA and on GPUs, and
// `a.mul_(s)` as a separately rounded product. Callers compile with floating-point
// contraction off (-ffp-contract=off, --fmad=false) so that only the fmas written here fuse.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace lookaround {

// a + alpha * b, fused (one rounding) or not (two), as chosen by the caller for its hardware.
template <bool kFused, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T add_scaled(T a, T b, T alpha) {
  if constexpr (kFused) {
    return std::fma(b, alpha, a);
  } else {
    return a + alpha * b;
  }
}

// One param group's row of FlatGroup.hyperparameter_table, ready for the element loop.
template <typename T>
struct SgdHyperparameters {
  T lr;
  T momentum;
  T dampening_complement;  // 1 - dampening
  T weight_decay;
  bool nesterov;
  bool maximize;

  C10_HOST_DEVICE static SgdHyperparameters from_row(const T* row) {
    // Eager passes alpha=1 - dampening computed in double from the Python float; computing it
    // in double from the table's value comes closest to that.
    const T complement = static_cast<T>(1.0 - static_cast<double>(row[2]));
    return {row[0], row[1], complement, row[3], row[4] != T(0), row[5] != T(0)};
  }
};

// Applies one SGD step to one element in the math type T and returns the new weight.
// With kMomentum, `buffer` holds the previous momentum on entry (ignored unless `ready`:
// a fresh buffer starts as the gradient) and the new momentum on exit.
template <bool kFused, bool kMomentum, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T sgd_step(T weight, T grad, T& buffer, bool ready, T grad_scale,
                                             const SgdHyperparameters<T>& h) {
  grad = grad / grad_scale;  // exact when the scale is 1
  if (h.maximize) {
    grad = -grad;
  }
  if (h.weight_decay != T(0)) {
    grad = add_scaled<kFused>(grad, weight, h.weight_decay);
  }
  if constexpr (kMomentum) {
    buffer = ready ? add_scaled<kFused>(buffer * h.momentum, grad, h.dampening_complement) : grad;
    grad = h.nesterov ? add_scaled<kFused>(grad, buffer, h.momentum) : buffer;
  }
  return add_scaled<kFused>(weight, grad, -h.lr);
}

}  // namespace lookaround
