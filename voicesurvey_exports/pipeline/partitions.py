"""One partition per campaign id, added by the sensors as campaigns appear."""

import dagster as dg

campaigns_partitions = dg.DynamicPartitionsDefinition(name="campaigns")
