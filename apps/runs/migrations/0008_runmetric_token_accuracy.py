from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0007_run_devices_nodes"),
    ]

    operations = [
        migrations.AddField(
            model_name="runmetric",
            name="train_accuracy",
            field=models.FloatField(blank=True, help_text="share of learnt tokens predicted right", null=True),
        ),
        migrations.AddField(
            model_name="runmetric",
            name="val_accuracy",
            field=models.FloatField(blank=True, null=True),
        ),
    ]
