// CPU kernels: the fused branch step (with the average in the same pass) and the branch mean.
//
// Threads split the columns [0, N) evenly; each walks the parameters its range overlaps. A step
// without an average streams each selected branch through them; an averaging step works in
// passes of kColumnsPerPass columns: the update of every selected branch, then the mean of all
// branches while the pass is still in cache. Either way each element of each branch crosses the
// memory bus once in each direction.
#include "../lookaround.h"
#include "../sgd_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace lookaround {
namespace {

// Columns of one pass of an averaging step. Its weights, gradients and momentum (9 x 32 KiB in
// fp32 with three branches) stay in L2 between the update and the average, and each row is read
// in runs long enough for the hardware prefetchers (1024 columns measured 25% slower).
constexpr int64_t kColumnsPerPass = 8192;
// Fewest columns worth a thread of their own.
constexpr int64_t kGrainColumns = 1 << 16;

// std::bit_cast needs C++20; extensions of older torch versions build as C++17.
template <typename To, typename From>
C10_ALWAYS_INLINE To bit_cast(From value) {
  return __builtin_bit_cast(To, value);
}

// Conversions between storage and math types written so that GCC vectorises them (those of
// c10::Half and c10::BFloat16 are not); both round to nearest even, as PyTorch does.
template <typename S>
struct Storage {
  static C10_ALWAYS_INLINE S load(S value) { return value; }
  static C10_ALWAYS_INLINE S store(S value) { return value; }
};

template <>
struct Storage<c10::BFloat16> {
  static C10_ALWAYS_INLINE float load(c10::BFloat16 value) {
    return bit_cast<float>(static_cast<uint32_t>(value.x) << 16);
  }
  static C10_ALWAYS_INLINE c10::BFloat16 store(float value) {
    const uint32_t bits = bit_cast<uint32_t>(value);
    const uint32_t rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
    const uint32_t result = value != value ? 0x7FC0 : rounded;  // NaN stays a quiet NaN
    return {static_cast<uint16_t>(result), c10::BFloat16::from_bits()};
  }
};

template <>
struct Storage<c10::Half> {
  static C10_ALWAYS_INLINE float load(c10::Half value) {
    const uint32_t sign = static_cast<uint32_t>(value.x & 0x8000) << 16;
    const uint32_t magnitude = value.x & 0x7FFF;
    // Rebias the exponent from 15 to 127; infinities and NaNs keep an all-ones exponent.
    const uint32_t widened = (magnitude << 13) + (magnitude >= 0x7C00 ? 0x70000000 : 0x38000000);
    // Subnormal halves (and zero) are whole multiples of 2^-24.
    const float subnormal = static_cast<float>(magnitude) * 0x1p-24f;
    return bit_cast<float>(sign | (magnitude < 0x0400 ? bit_cast<uint32_t>(subnormal) : widened));
  }
  static C10_ALWAYS_INLINE c10::Half store(float value) {
    const uint32_t bits = bit_cast<uint32_t>(value);
    const uint32_t sign = (bits >> 16) & 0x8000;
    const uint32_t magnitude = bits & 0x7FFFFFFF;
    // Normal halves: rebias the exponent and drop 13 mantissa bits, rounding to nearest even;
    // a carry moves into the exponent, up to infinity.
    const uint32_t rounded = (magnitude - 0x38000000 + 0x0FFF + ((magnitude >> 13) & 1)) >> 13;
    const uint32_t normal = std::min<uint32_t>(rounded, 0x7C00);
    // Below 2^-14 halves are multiples of 2^-24, the spacing of floats in [0.5, 1): adding 0.5
    // lets the FPU do the rounding.
    const uint32_t subnormal = bit_cast<uint32_t>(bit_cast<float>(magnitude) + 0.5f) - 0x3F000000;
    const uint32_t result = magnitude > 0x7F800000 ? 0x7E00 : magnitude < 0x38800000 ? subnormal : normal;
    return {static_cast<uint16_t>(sign | result), c10::Half::from_bits()};
  }
};

// What every thread needs to know about one step.
template <typename S>
struct CpuStep {
  StepBuffers<S> buffers;
  at::opmath_type<S> grad_scale;
  bool average;
};

// One SGD step of `count` columns of one branch.
template <bool kFused, bool kMomentum, typename S, typename T>
C10_ALWAYS_INLINE void update_columns(S* __restrict weights, const S* __restrict grads, S* __restrict momentum,
                                      int64_t count, bool ready, T grad_scale, const SgdHyperparameters<T>& h) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    T buffer{};
    if constexpr (kMomentum) {
      buffer = Storage<S>::load(momentum[j]);
    }
    const T weight = Storage<S>::load(weights[j]);
    weights[j] = Storage<S>::store(
        sgd_step<kFused, kMomentum>(weight, Storage<S>::load(grads[j]), buffer, ready, grad_scale, h));
    if constexpr (kMomentum) {
      momentum[j] = Storage<S>::store(buffer);
    }
  }
}

// mean[j] = (rows[0][j] + ... + rows[num_rows - 1][j]) / num_rows, summed left to right as eager does.
template <typename S, typename T>
C10_ALWAYS_INLINE void mean_of_rows(T* __restrict mean, const S* rows, int64_t row_stride, int64_t num_rows,
                                    int64_t count) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    mean[j] = Storage<S>::load(rows[j]);
  }
  for (int64_t r = 1; r < num_rows; ++r) {
    const S* __restrict row = rows + r * row_stride;
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) {
      mean[j] += Storage<S>::load(row[j]);
    }
  }
  const T divisor = static_cast<T>(num_rows);
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    mean[j] /= divisor;
  }
}

template <typename S, typename T>
C10_ALWAYS_INLINE void store_columns(S* __restrict destination, const T* __restrict values, int64_t count) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    destination[j] = Storage<S>::store(values[j]);
  }
}

// Replaces every row's columns [0, count) by their mean.
template <typename S>
C10_ALWAYS_INLINE void average_columns(S* rows, int64_t row_stride, int64_t num_rows, int64_t count) {
  at::opmath_type<S> mean[kColumnsPerPass];
  mean_of_rows(mean, rows, row_stride, num_rows, count);
  store_columns(rows, mean, count);
  for (int64_t r = 1; r < num_rows; ++r) {
    std::copy_n(rows, count, rows + r * row_stride);
  }
}

// Index of the tile holding column `column`.
inline int64_t tile_of(const int64_t* tiles, int64_t num_tiles, int64_t column) {
  int64_t low = 0, high = num_tiles - 1;
  while (low < high) {
    const int64_t middle = (low + high) / 2;
    if (tiles[3 * middle] + tiles[3 * middle + 1] <= column) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

// The step over columns [begin, end), one pass at a time.
template <typename S, bool kFused>
C10_ALWAYS_INLINE void step_columns(const CpuStep<S>& step, int64_t begin, int64_t end) {
  using T = at::opmath_type<S>;
  const StepBuffers<S>& f = step.buffers;
  for (int64_t t = tile_of(f.tiles, f.num_tiles, begin); t < f.num_tiles; ++t) {
    const int64_t* tile = f.tiles + 3 * t;
    const int64_t first = std::max(begin, tile[0]), last = std::min(end, tile[0] + tile[1]);
    if (first >= end) {
      break;
    }
    const int64_t param = tile[2];
    const auto h = SgdHyperparameters<T>::from_row(f.hyperparameters + 6 * f.param_group[param]);
    const bool uses_momentum = h.momentum != T(0);
    // Without an average each branch streams through its whole part of the parameter; with
    // one, passes keep every branch's columns in cache until their mean is taken.
    const int64_t pass_columns = step.average ? kColumnsPerPass : last - first;
    for (int64_t pass = first; pass < last; pass += pass_columns) {
      const int64_t count = std::min(pass_columns, last - pass);
      for (int64_t b = f.branch_begin; b < f.branch_end; ++b) {
        const int64_t flag = b * f.num_params + param;
        if (!f.has_grad[flag]) {
          continue;
        }
        S* weights = f.weights + b * f.numel + pass;
        const S* grads = f.grads + b * f.grad_row_stride + pass;
        const bool ready = f.momentum_ready[flag];
        if (uses_momentum) {
          S* momentum = f.momentum + b * f.numel + pass;
          update_columns<kFused, true>(weights, grads, momentum, count, ready, step.grad_scale, h);
        } else {
          update_columns<kFused, false>(weights, grads, static_cast<S*>(nullptr), count, ready, step.grad_scale, h);
        }
      }
      if (step.average) {
        average_columns(f.weights + pass, f.numel, f.num_branches, count);
      }
    }
  }
}

template <typename S>
using StepColumns = void (*)(const CpuStep<S>&, int64_t, int64_t);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The build targets baseline x86-64 so the module runs on any x86-64 CPU; this copy, picked at
// run time, uses AVX2 and FMA (as PyTorch's own AVX2 and AVX-512 kernels do) and F16C.
template <typename S>
__attribute__((target("avx2,fma,f16c"))) void step_columns_avx2(const CpuStep<S>& step, int64_t begin, int64_t end) {
  step_columns<S, true>(step, begin, end);
}

template <typename S>
StepColumns<S> select_step_columns() {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2 ? step_columns_avx2<S> : step_columns<S, false>;
}
#else
template <typename S>
StepColumns<S> select_step_columns() {
#ifdef __FP_FAST_FMA  // the baseline has a hardware fma (AArch64, POWER, ...)
  return step_columns<S, true>;
#else
  return step_columns<S, false>;
#endif
}
#endif

}  // namespace

void step_cpu(const StepArgs& args) {
  if (args.found_inf && args.found_inf->item<float>() != 0) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.weights.scalar_type(), "lookaround_step_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const CpuStep<scalar_t> step{
        StepBuffers<scalar_t>::of(args),
        args.grad_scale ? static_cast<T>(args.grad_scale->item<float>()) : T(1),
        args.average && (!args.average_flag || args.average_flag->item<bool>()),
    };
    const StepColumns<scalar_t> step_columns = select_step_columns<scalar_t>();
    at::parallel_for(0, step.buffers.numel, kGrainColumns,
                     [&](int64_t begin, int64_t end) { step_columns(step, begin, end); });
  });
}

void mean_cpu(const at::Tensor& weights, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights.scalar_type(), "lookaround_mean_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* rows = weights.const_data_ptr<scalar_t>();
    const int64_t numel = weights.size(1), num_rows = weights.size(0);
    const bool out_in_math_type = out.scalar_type() == c10::CppTypeToScalarType<T>::value;
    at::parallel_for(0, numel, kGrainColumns, [&](int64_t begin, int64_t end) {
      T mean[kColumnsPerPass];
      for (int64_t pass = begin; pass < end; pass += kColumnsPerPass) {
        const int64_t count = std::min(kColumnsPerPass, end - pass);
        mean_of_rows(mean, rows + pass, numel, num_rows, count);
        if (out_in_math_type) {
          std::copy_n(mean, count, out.data_ptr<T>() + pass);
        } else {
          store_columns(out.data_ptr<scalar_t>() + pass, mean, count);
        }
      }
    });
  });
}

}  // namespace lookaround
