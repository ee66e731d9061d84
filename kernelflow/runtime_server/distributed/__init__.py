"""The world of ranks: MPI / NCCL communicators, bucketed all-reduce, replicated commands (issue #18)."""
