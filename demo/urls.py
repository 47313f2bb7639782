from django.urls import path

from . import views

urlpatterns = [
    path("", views.notes, name="notes"),
    path("export.csv", views.export, name="export"),
    path("slow", views.slow, name="slow"),
    path("api", views.api, name="api"),
    path("health", views.health, name="health"),
    path("pool/", views.pool_page, name="pool"),
    path("pool.json", views.pool_json, name="pool-json"),
]
