from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0010_job_lease"),
    ]

    operations = [
        migrations.AddField(
            model_name="basemodel",
            name="shape",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="layers, widths, heads and vocabulary from its config.json: what the memory estimate "
                "counts (worker/memory.py Shape)",
            ),
        ),
    ]
