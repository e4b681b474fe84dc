"""The VoiceSurveyAgent app database: schema, migrations and the queries this pipeline runs."""
