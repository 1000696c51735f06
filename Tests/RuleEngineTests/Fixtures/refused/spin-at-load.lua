-- expect-load: 0: resource limit
while true do end
