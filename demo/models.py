from django.db import models


class Note(models.Model):
    """A guestbook entry: what the notes page reads, writes and exports."""

    author = models.CharField(max_length=60)
    text = models.CharField(max_length=280)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.author}: {self.text}"
