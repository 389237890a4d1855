"""Small helpers shared by the world modules: named random streams and quotas."""
import hashlib
import random


def stream(seed, name):
    """An independent random stream per named purpose, so that changing one part of the world
    (say, the number of dialogues) leaves every other part byte-identical. Derived with sha256,
    never with hash(), whose value changes with PYTHONHASHSEED."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def quotas(total, weights):
    """Split `total` into integer counts proportional to `weights` (a list of (key, weight)),
    largest remainders first, so the counts always add up to `total`."""
    norm = sum(w for _, w in weights)
    exact = [(key, total * w / norm) for key, w in weights]
    counts = {key: int(x) for key, x in exact}
    leftover = total - sum(counts.values())
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i][1] - int(exact[i][1])), i))
    for i in by_remainder[:leftover]:
        counts[exact[i][0]] += 1
    return counts


def shuffled_kinds(counts, rng):
    """A shuffled list holding each key as many times as its count."""
    kinds = [key for key, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    return kinds


class Cycler:
    """Draws items in shuffled rounds, so every item is used before any is used again."""

    def __init__(self, items, rng):
        assert items, "nothing to cycle through"
        self.items, self.rng, self.queue = list(items), rng, []

    def next(self):
        if not self.queue:
            self.queue = list(self.items)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def upper_first(text):
    """The text with its first character upper-cased and the rest as it is (str.capitalize would lower the
    rest); a CJK character has no case, so Chinese text comes back unchanged."""
    return text[0].upper() + text[1:]
