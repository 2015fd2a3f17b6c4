// CUDA kernels: the fused branch step (one launch per flat group and step, one thread block
// per row of the chunk table) and the branch mean.
//
// A thread owns one column of a tile at a time and walks the branches: it updates the selected
// ones and, when averaging, sums the stored weights in registers and writes the mean to every
// branch, so each element crosses the memory bus once in each direction. found_inf, the grad
// scale, the average flag and the hyperparameters are read on the device: no host sync.
#include "../lookaround.h"
#include "../sgd_math.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

namespace lookaround {
namespace {

constexpr int kThreads = 256;

// The step's scalars stay in device memory: the host never waits for them.
struct DeviceScalars {
  const float* grad_scale;  // null: no scaling
  const float* found_inf;   // null: never skip
  bool average;
  const bool* average_flag;  // null: `average` decides alone
};

// PyTorch's CUDA `div_` by a Python number multiplies by its reciprocal; the mean does the same.
template <typename T>
__device__ __forceinline__ T divide_by_count(T sum, int64_t count) {
  return sum * (T(1) / static_cast<T>(count));
}

template <typename S>
__global__ void __launch_bounds__(kThreads) step_kernel(const StepBuffers<S> p, const DeviceScalars scalars) {
  using T = at::opmath_type<S>;
  if (scalars.found_inf != nullptr && *scalars.found_inf != 0.0f) {
    return;
  }
  const bool average = scalars.average && (scalars.average_flag == nullptr || *scalars.average_flag);
  const int64_t* tile = p.tiles + 3 * static_cast<int64_t>(blockIdx.x);
  const int64_t start = tile[0], length = tile[1], param = tile[2];
  const auto h = SgdHyperparameters<T>::from_row(p.hyperparameters + 6 * p.param_group[param]);
  const bool uses_momentum = h.momentum != T(0);
  const T grad_scale = scalars.grad_scale != nullptr ? static_cast<T>(*scalars.grad_scale) : T(1);

  for (int64_t column = start + threadIdx.x; column < start + length; column += kThreads) {
    T sum{};
    for (int64_t b = 0; b < p.num_branches; ++b) {
      const int64_t flag = b * p.num_params + param;
      const bool updated = b >= p.branch_begin && b < p.branch_end && p.has_grad[flag];
      if (!updated && !average) {
        continue;
      }
      const int64_t index = b * p.numel + column;
      T weight = static_cast<T>(p.weights[index]);
      if (updated) {
        const bool ready = p.momentum_ready[flag];
        const T grad = static_cast<T>(p.grads[b * p.grad_row_stride + column]);
        T buffer{};
        if (uses_momentum) {
          if (ready) {
            buffer = static_cast<T>(p.momentum[index]);
          }
          weight = sgd_step<true, true>(weight, grad, buffer, ready, grad_scale, h);
          p.momentum[index] = static_cast<S>(buffer);
        } else {
          weight = sgd_step<true, false>(weight, grad, buffer, ready, grad_scale, h);
        }
        const S stored = static_cast<S>(weight);
        if (!average) {
          p.weights[index] = stored;
          continue;
        }
        weight = static_cast<T>(stored);  // the mean is of the stored weights, as in eager
      }
      sum = b == 0 ? weight : sum + weight;
    }
    if (average) {
      const S mean = static_cast<S>(divide_by_count(sum, p.num_branches));
      for (int64_t b = 0; b < p.num_branches; ++b) {
        p.weights[b * p.numel + column] = mean;
      }
    }
  }
}

template <typename S, typename Out>
__global__ void __launch_bounds__(kThreads) mean_kernel(const S* weights, int64_t numel, int64_t num_rows, Out* out) {
  using T = at::opmath_type<S>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t column = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; column < numel; column += stride) {
    T sum = static_cast<T>(weights[column]);
    for (int64_t r = 1; r < num_rows; ++r) {
      sum += static_cast<T>(weights[r * numel + column]);
    }
    out[column] = static_cast<Out>(divide_by_count(sum, num_rows));
  }
}

template <typename T>
const T* optional_pointer(const std::optional<at::Tensor>& tensor) {
  return tensor ? tensor->const_data_ptr<T>() : nullptr;
}

}  // namespace

void step_cuda(const StepArgs& args) {
  const c10::cuda::CUDAGuard guard(args.weights.device());
  const int64_t num_tiles = args.tiles.size(0);
  TORCH_CHECK(num_tiles <= std::numeric_limits<int32_t>::max(), "too many tiles for one launch: ", num_tiles);
  const DeviceScalars scalars{optional_pointer<float>(args.grad_scale), optional_pointer<float>(args.found_inf),
                               args.average, optional_pointer<bool>(args.average_flag)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.weights.scalar_type(), "lookaround_step_cuda", [&] {
    step_kernel<scalar_t><<<static_cast<unsigned>(num_tiles), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        StepBuffers<scalar_t>::of(args), scalars);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void mean_cuda(const at::Tensor& weights, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(weights.device());
  const int64_t numel = weights.size(1), num_rows = weights.size(0);
  if (numel == 0) {
    return;
  }
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((numel + kThreads - 1) / kThreads, 1 << 20));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights.scalar_type(), "lookaround_mean_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* rows = weights.const_data_ptr<scalar_t>();
    if (out.scalar_type() == weights.scalar_type()) {
      mean_kernel<<<blocks, kThreads, 0, stream>>>(rows, numel, num_rows, out.data_ptr<scalar_t>());
    } else {
      mean_kernel<<<blocks, kThreads, 0, stream>>>(rows, numel, num_rows, out.data_ptr<T>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lookaround
