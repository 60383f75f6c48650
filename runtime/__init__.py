"""flmplan runtime: execute a plan with torch.distributed."""
