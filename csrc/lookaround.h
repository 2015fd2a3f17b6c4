// Declarations shared by the Python frontend and the CPU and CUDA kernels.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace lookaround {

// One fused step over the flat [branches, N] buffers of a FlatGroup (see lookaround.cpp
// for the checks the frontend makes before a kernel sees these).
struct StepArgs {
  at::Tensor weights;                  // [branches, N], updated in place
  at::Tensor grads;                    // [branches, N]; rows may share memory (stride 0)
  std::optional<at::Tensor> momentum;  // [branches, N]; absent when no group uses momentum
  at::Tensor tiles;                    // [T, 3] int64 (start, length, parameter), ascending, covering [0, N)
  at::Tensor hyperparameters;          // [groups, 6] in the math dtype: lr, momentum, dampening,
                                       // weight_decay, nesterov, maximize
  at::Tensor param_group;              // [P] int32
  at::Tensor has_grad;                 // [branches, P] bool
  at::Tensor momentum_ready;           // [branches, P] bool
  int64_t branch_begin;                // update branches [branch_begin, branch_end)
  int64_t branch_end;
  std::optional<at::Tensor> grad_scale;    // 0-dim float32: gradients are divided by it
  std::optional<at::Tensor> found_inf;     // 0-dim float32: nonzero skips the whole step
  bool average;                            // average every branch after the update...
  std::optional<at::Tensor> average_flag;  // ...if this 0-dim bool, when given, is true
};

// The raw pointers and sizes of StepArgs' buffers a kernel for storage type S works with.
template <typename S>
struct StepBuffers {
  using T = at::opmath_type<S>;  // the math type
  S* weights;
  const S* grads;
  S* momentum;  // null when no group uses momentum
  int64_t numel;
  int64_t grad_row_stride;  // numel, or 0 when every branch shares one gradient row
  int64_t num_branches;
  int64_t num_params;
  int64_t branch_begin;
  int64_t branch_end;
  const int64_t* tiles;
  int64_t num_tiles;
  const T* hyperparameters;
  const int32_t* param_group;
  const bool* has_grad;
  const bool* momentum_ready;

  static StepBuffers of(const StepArgs& args) {
    return {args.weights.data_ptr<S>(),
            args.grads.const_data_ptr<S>(),
            args.momentum ? args.momentum->data_ptr<S>() : nullptr,
            args.weights.size(1),
            args.grads.stride(0),
            args.weights.size(0),
            args.has_grad.size(1),
            args.branch_begin,
            args.branch_end,
            args.tiles.const_data_ptr<int64_t>(),
            args.tiles.size(0),
            args.hyperparameters.const_data_ptr<T>(),
            args.param_group.const_data_ptr<int32_t>(),
            args.has_grad.const_data_ptr<bool>(),
            args.momentum_ready.const_data_ptr<bool>()};
  }
};

void step_cpu(const StepArgs& args);
void mean_cpu(const at::Tensor& weights, const at::Tensor& out);

#ifdef WITH_CUDA
void step_cuda(const StepArgs& args);
void mean_cuda(const at::Tensor& weights, const at::Tensor& out);
#endif

}  // namespace lookaround
