"""Dynamic micro-batching: queue sequences, form batches, run them off the event loop."""

from service.batching.batcher import Batcher, BatchObserver
from service.batching.pending import PendingRequest
from service.batching.planner import BatchPolicy, Plan, plan_batch

__all__ = ["BatchObserver", "BatchPolicy", "Batcher", "PendingRequest", "Plan", "plan_batch"]
