"""A tiny BEIR folder for the own-data walkthrough tests (docs/own-data.md, docs/python-api.md).

24 short documents on 12 topics (two per topic: the relevant one and a near miss that shares words),
12 queries, 8 judged for train and 4 for test. Small enough that every step runs in seconds on a CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

TOPICS = [
    ("photosynthesis", "How do plants turn light into sugar?", "Photosynthesis in plant leaves converts light, water and carbon dioxide into sugar and oxygen.", "Plants need water; leaves lose water through small pores on hot days."),
    ("volcano", "What makes a volcano erupt?", "A volcano erupts when pressure from gas-rich magma below the crust forces molten rock to the surface.", "Volcanic soil is fertile, so farms often sit on the slopes of old volcanoes."),
    ("vaccine", "How does a vaccine protect against disease?", "A vaccine trains the immune system to recognise a pathogen so that antibodies respond quickly to a later infection.", "Vaccines are stored cold; a broken refrigerator can spoil a whole shipment."),
    ("tides", "What causes ocean tides?", "Ocean tides are caused by the gravitational pull of the moon and the sun on the rotating earth.", "Tide pools at the ocean shore hold crabs, snails and small fish."),
    ("rainbow", "Why does a rainbow appear after rain?", "A rainbow forms when sunlight is refracted and reflected inside raindrops, splitting white light into colours.", "Rain boots and umbrellas sell well in the rainy season."),
    ("bread", "Why does bread dough rise?", "Yeast in bread dough ferments sugar and releases carbon dioxide gas, which makes the dough rise.", "Bread is sold fresh every morning at the bakery on the corner."),
    ("earthquake", "How are earthquakes measured?", "Seismometers record ground motion, and the moment magnitude scale measures the energy an earthquake releases.", "Earthquake drills teach children to hide under desks."),
    ("compass", "Why does a compass point north?", "A compass needle is a small magnet that aligns with the earth's magnetic field and points to magnetic north.", "The north side of a house gets less sun in the northern hemisphere."),
    ("bees", "How do bees make honey?", "Bees collect flower nectar, enzymes break it down, and evaporation in the hive turns it into honey.", "Honey jars are often sold at farmers markets next to beeswax candles."),
    ("thunder", "What causes thunder during a storm?", "Thunder is the sound of air expanding explosively when lightning heats it in a fraction of a second.", "Storm chasers drive long distances to film thunderstorms."),
    ("ice", "Why does ice float on water?", "Ice floats because water expands when it freezes, so solid ice is less dense than liquid water.", "Ice cream melts quickly on a hot summer day."),
    ("sleep", "Why do humans need sleep?", "Sleep lets the brain consolidate memories and clear metabolic waste, and it restores the body.", "A comfortable mattress and a dark room help many people fall asleep."),
]
TRAIN, TEST = TOPICS[:8], TOPICS[8:]


def make_tiny_beir(root: Path) -> Path:
    """Write corpus.jsonl, queries.jsonl and qrels/{train,test}.tsv under ``root``; return ``root``."""
    root = Path(root)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries = [], []
    for name, question, relevant, near_miss in TOPICS:
        corpus.append({"_id": f"{name}-1", "title": name.capitalize(), "text": relevant})
        corpus.append({"_id": f"{name}-2", "title": name.capitalize(), "text": near_miss})
        queries.append({"_id": f"q-{name}", "text": question})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    for split, topics in (("train", TRAIN), ("test", TEST)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"q-{name}\t{name}-1\t1" for name, *_ in topics]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
