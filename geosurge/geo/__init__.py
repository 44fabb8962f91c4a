"""Geography: great-circle distances, geo-localization metrics, the H3 geocell hierarchy and the ~1 km land mask."""
