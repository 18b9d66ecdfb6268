"""`synthetic-facts`: seeded documents of facts about invented people, towns and organisations,
each with 2-4 questions whose answers appear verbatim in the document (StreamingQA CSV layout).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

ANSWER_SEP = "\\"  # one backslash between alternative answers, as in the CaMeLS CSVs
COLUMNS = ("text", "question", "answers")

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "qu", "r", "s",
           "sk", "t", "th", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "y")
_CODAS = ("", "n", "l", "r", "s", "th", "m", "nd", "rk", "x")
_TOWN_ENDS = ("ford", "wick", "moor", "haven", "stead", "bury", "dale", "mouth", "holm", "crest",
              "field", "gate")
_ORG_KINDS = ("Cartographic Society", "Glassworks", "Rowing Club", "Observatory", "Seed Bank",
              "Choir", "Printing House", "Lighthouse Trust", "Weaving Guild", "Chess Circle",
              "Botanical Garden", "Ferry Company", "Clock Museum", "Beekeepers' Union")
_OCCUPATIONS = ("clockmaker", "cartographer", "beekeeper", "glassblower", "surveyor", "botanist",
                "ferry pilot", "archivist", "violin maker", "stonemason", "astronomer", "weaver",
                "bookbinder", "lighthouse keeper", "shipwright", "printer", "brewer", "chemist")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables)).capitalize()


def _fresh(rng: random.Random, used: set[str], syllables: tuple[int, int]) -> str:
    """An invented word never returned before for this `used` set."""
    while True:
        word = _word(rng, rng.randint(*syllables))
        if word not in used:
            used.add(word)
            return word


def _document(rng: random.Random, used: set[str], index: int) -> dict:
    first = _word(rng, rng.randint(1, 2))
    surname = _fresh(rng, used, (2, 3))
    person = f"{first} {surname}"
    town = _fresh(rng, used, (1, 2)) + rng.choice(_TOWN_ENDS)
    river = _fresh(rng, used, (2, 2))
    org = f"{_fresh(rng, used, (2, 2))} {rng.choice(_ORG_KINDS)}"
    occupation = rng.choice(_OCCUPATIONS)
    town_year, birth_year, org_year = sorted(rng.sample(range(1450, 1990), 3))
    town_year = min(town_year, birth_year - 60)
    org_year = max(org_year, birth_year + 18)
    birth_date = f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {birth_year}"
    population = f"{rng.randint(800, 480000):,}"
    members = str(rng.randint(12, 900))

    sentences = [
        f"{person} (born {birth_date}) was a {occupation} from {town}.",
        f"{town} is a town of {population} people on the {river} River; it was founded in "
        f"{town_year}.",
        f"In {org_year}, {surname} founded the {org}, which today has {members} members.",
        rng.choice([f"Before that, {surname} trained as a {occupation} in {town}.",
                    f"{surname} lived near the {river} River.",
                    f"The {org} meets every spring in {town}."]),
    ]
    questions = [
        (f"When was {person} born?", [birth_date, birth_year]),
        (f"What is the occupation of {person}?", [occupation]),
        (f"Which town is {person} from?", [town]),
        (f"What is the population of {town}?", [population]),
        (f"In which year was {town} founded?", [town_year]),
        (f"On which river does {town} lie?", [f"{river} River", f"the {river} River"]),
        (f"Who founded the {org}?", [person, surname]),
        (f"How many members does the {org} have?", [members]),
        (f"In which year was the {org} founded?", [org_year]),
    ]
    picked = rng.sample(questions, rng.randint(2, 4))
    return {
        "id": f"doc-{index}",
        "text": " ".join(sentences),
        "entities": [person, surname, town, river, org],
        "questions": [{"question": q, "answers": [str(a) for a in answers]}
                      for q, answers in picked],
    }


def generate_facts(n_documents: int, seed: int) -> list[dict]:
    """n_documents dicts {id, text, entities, questions: [{question, answers}]}; no entity name
    repeats within one call. The same seed gives the same documents in any process."""
    rng, used = random.Random(seed), set()
    return [_document(rng, used, i) for i in range(n_documents)]


def _write_csv(path: Path, documents: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for doc in documents:
            for qa in doc["questions"]:
                writer.writerow([doc["text"], qa["question"], ANSWER_SEP.join(qa["answers"])])


def write_streamingqa(out_dir: str | Path, n_train: int = 500, n_val: int = 100,
                      n_test: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write {out_dir}/{train,val,test}.csv (columns text, question, answers; one row per
    question). The documents come from one generate_facts call, so no entity is in two splits."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = generate_facts(n_train + n_val + n_test, seed)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, n_train + n_val + n_test)}
    paths = {}
    for split, (lo, hi) in bounds.items():
        paths[split] = out / f"{split}.csv"
        _write_csv(paths[split], docs[lo:hi])
    return paths
