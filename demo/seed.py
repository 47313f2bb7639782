"""Seeds the guestbook with a few hundred notes, once (so the export has something to stream)."""

from __future__ import annotations

import os

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    django.setup()
    from demo.models import Note

    if Note.objects.exists():
        return
    authors = ["ada", "grace", "linus", "guido", "barbara", "ken"]
    Note.objects.bulk_create(
        Note(author=authors[i % len(authors)], text=f"seeded note number {i}") for i in range(1, 501)
    )


if __name__ == "__main__":
    main()
