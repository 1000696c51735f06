-- expect-load: 2: resource limit
while true do end
