from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.requests.labels("m", "1", "200").inc()
    assert samples(first)[("seqserve_requests_total", (("model", "m"), ("status", "200"), ("version", "1")))] == 1
    assert not any(name == "seqserve_requests_total" for name, _ in samples(second))


def test_the_batch_observer_feeds_the_histograms() -> None:
    metrics = Metrics()
    observer = metrics.observer("m", 3)
    observer.queue_depth(5)
    observer.queue_wait(0.01)
    observer.batch(size=4, padded_tokens=40, real_tokens=30, compute_seconds=0.002)
    observer.dropped("cancelled", 2)
    values = samples(metrics)
    labels = (("model", "m"), ("version", "3"))
    assert values[("seqserve_queue_depth", labels)] == 5
    assert values[("seqserve_batch_size_sum", labels)] == 4
    assert values[("seqserve_batch_padded_tokens_sum", labels)] == 40
    assert values[("seqserve_padding_efficiency_sum", labels)] == 0.75
    assert values[("seqserve_compute_seconds_count", labels)] == 1
    assert values[("seqserve_queue_wait_seconds_count", labels)] == 1
    assert values[("seqserve_dropped_sequences_total", (*labels[:1], ("reason", "cancelled"), labels[1]))] == 2
