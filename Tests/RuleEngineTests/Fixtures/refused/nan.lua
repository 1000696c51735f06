-- expect-load: 2: NaN or infinite
config "refused.nan" { ratio = 0 / 0 }
