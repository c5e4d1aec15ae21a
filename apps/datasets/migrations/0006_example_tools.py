from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("datasets", "0005_version_derived_from"),
    ]

    operations = [
        migrations.AddField(
            model_name="example",
            name="tools",
            field=models.JSONField(
                blank=True, default=list, help_text="OpenAI function definitions offered to the model"
            ),
        ),
        migrations.AddField(
            model_name="datasetversionitem",
            name="tools",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
