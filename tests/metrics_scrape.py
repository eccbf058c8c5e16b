"""Reading a Prometheus scrape in tests: every sample by name and labels."""

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Scrape:
    """The samples of one scrape; ``value`` is 0 for a series not (yet) there."""

    samples: dict[tuple[str, frozenset], float]

    @classmethod
    def parse(cls, text: str) -> "Scrape":
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str) -> bool:
        return any(sample_name == name for sample_name, _ in self.samples)

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample_name, labels in self.samples if sample_name == name]

    def moved(self, before: "Scrape", name: str, **labels: str) -> float:
        """How much the series grew since ``before``."""
        return self.value(name, **labels) - before.value(name, **labels)
