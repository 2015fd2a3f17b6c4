import os

import torch

# Triton kernels run on CPU tensors through the interpreter when no GPU is present; it must be
# chosen before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
