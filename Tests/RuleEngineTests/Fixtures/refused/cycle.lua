-- expect-load: 4: contains a cycle
local loop = {}
loop.next = loop
flag "refused.cycle" { variants = { a = loop }, default = "a" }
