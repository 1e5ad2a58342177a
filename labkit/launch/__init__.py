"""Starting runs: one configuration in this process (runner), several processes (distributed, worker),
every configuration of a profile (runall) and SLURM jobs (slurm)."""

# NVLink multicast stays off in NCCL, PyTorch and NVSHMEM: a program using it can put a shared host's
# GPUs out of service. Set for every rank, and for DataParallel in the notebook's own process.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
