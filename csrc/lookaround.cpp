// Python frontend: checks the flat buffers, then runs the CPU or CUDA kernel for their device.
#include "lookaround.h"

#include <ATen/OpMathType.h>
#include <torch/extension.h>

namespace lookaround {
namespace {

void check_tensor(const at::Tensor& tensor, const char* name, const at::Tensor& weights, at::ScalarType dtype,
                  at::IntArrayRef sizes) {
  TORCH_CHECK(tensor.device() == weights.device(), name, " is on ", tensor.device(), ", the weights on ",
              weights.device());
  TORCH_CHECK(tensor.scalar_type() == dtype, name, " must be ", dtype, ", got ", tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == sizes, name, " must have shape ", sizes, ", got ", tensor.sizes());
  TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
}

// A 0-dim tensor a kernel reads on the weights' device (converted there without a host sync).
std::optional<at::Tensor> device_scalar(const std::optional<at::Tensor>& value, const char* name,
                                        const at::Tensor& weights, at::ScalarType dtype) {
  if (!value) {
    return std::nullopt;
  }
  TORCH_CHECK(value->numel() == 1, name, " must hold one value, got shape ", value->sizes());
  return value->to(weights.device(), dtype, /*non_blocking=*/true).reshape({});
}

void step(const at::Tensor& weights, const at::Tensor& grads, const std::optional<at::Tensor>& momentum,
          const at::Tensor& tiles, const at::Tensor& hyperparameters, const at::Tensor& param_group,
          const at::Tensor& has_grad, const at::Tensor& momentum_ready, int64_t branch_begin, int64_t branch_end,
          const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf, bool average,
          const std::optional<at::Tensor>& average_flag) {
  TORCH_CHECK(weights.dim() == 2 && weights.is_contiguous(), "weights must be a contiguous [branches, N] tensor");
  const int64_t num_branches = weights.size(0), numel = weights.size(1), num_params = param_group.numel();
  TORCH_CHECK(grads.device() == weights.device() && grads.scalar_type() == weights.scalar_type() &&
                  grads.sizes() == weights.sizes() && grads.stride(1) == 1 &&
                  (grads.stride(0) == numel || grads.stride(0) == 0),
              "grads must match the weights, with rows contiguous or all sharing one row");
  if (momentum) {
    check_tensor(*momentum, "momentum", weights, weights.scalar_type(), weights.sizes());
  }
  TORCH_CHECK(tiles.dim() == 2 && tiles.size(1) == 3, "tiles must be [T, 3]");
  check_tensor(tiles, "tiles", weights, at::kLong, tiles.sizes());
  TORCH_CHECK(hyperparameters.dim() == 2 && hyperparameters.size(1) == 6, "hyperparameters must be [groups, 6]");
  check_tensor(hyperparameters, "hyperparameters", weights, at::toOpMathType(weights.scalar_type()),
               hyperparameters.sizes());
  check_tensor(param_group, "param_group", weights, at::kInt, {num_params});
  check_tensor(has_grad, "has_grad", weights, at::kBool, {num_branches, num_params});
  check_tensor(momentum_ready, "momentum_ready", weights, at::kBool, {num_branches, num_params});
  TORCH_CHECK(0 <= branch_begin && branch_begin <= branch_end && branch_end <= num_branches, "branches [",
              branch_begin, ", ", branch_end, ") out of range for ", num_branches, " branches");
  if (numel == 0 || tiles.size(0) == 0) {
    return;
  }
  const StepArgs args{
      weights,
      grads,
      momentum,
      tiles,
      hyperparameters,
      param_group,
      has_grad,
      momentum_ready,
      branch_begin,
      branch_end,
      device_scalar(grad_scale, "grad_scale", weights, at::kFloat),
      device_scalar(found_inf, "found_inf", weights, at::kFloat),
      average,
      device_scalar(average_flag, "average_flag", weights, at::kBool),
  };
  if (weights.is_cuda()) {
#ifdef WITH_CUDA
    step_cuda(args);
#else
    TORCH_CHECK(false, "this build of the lookaround extension has no CUDA kernels");
#endif
  } else {
    TORCH_CHECK(weights.is_cpu(), "unsupported device ", weights.device());
    step_cpu(args);
  }
}

void mean(const at::Tensor& weights, const at::Tensor& out) {
  TORCH_CHECK(weights.dim() == 2 && weights.is_contiguous(), "weights must be a contiguous [branches, N] tensor");
  TORCH_CHECK(weights.size(0) > 0, "the mean of no branches is undefined");
  const at::ScalarType storage = weights.scalar_type();
  TORCH_CHECK(out.scalar_type() == storage || out.scalar_type() == at::toOpMathType(storage), "out must be ",
              storage, " or ", at::toOpMathType(storage), ", got ", out.scalar_type());
  check_tensor(out, "out", weights, out.scalar_type(), {weights.size(1)});
  if (weights.is_cuda()) {
#ifdef WITH_CUDA
    mean_cuda(weights, out);
#else
    TORCH_CHECK(false, "this build of the lookaround extension has no CUDA kernels");
#endif
  } else {
    TORCH_CHECK(weights.is_cpu(), "unsupported device ", weights.device());
    mean_cpu(weights, out);
  }
}

}  // namespace
}  // namespace lookaround

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "Fused Lookaround kernels over flat [branches, N] buffers";
  m.attr("has_cuda") = py::bool_(
#ifdef WITH_CUDA
      true
#else
      false
#endif
  );
  m.def("step", &lookaround::step, py::arg("weights"), py::arg("grads"), py::arg("momentum"), py::arg("tiles"),
        py::arg("hyperparameters"), py::arg("param_group"), py::arg("has_grad"), py::arg("momentum_ready"),
        py::arg("branch_begin"), py::arg("branch_end"), py::arg("grad_scale"), py::arg("found_inf"),
        py::arg("average"), py::arg("average_flag"),
        "Update branches [branch_begin, branch_end) by one SGD step and, if asked, average all branches, in place");
  m.def("mean", &lookaround::mean, py::arg("weights"), py::arg("out"),
        "Write the mean of the weights' rows into out");
}
