import RuleModel

/// Translates flagd flag files (`*.flagd.json`) into Lua rule source, so that they load through the same loader,
/// sandbox and budgets as rule files and answer from the same engine.
///
/// Each flagd flag becomes one `flag "key" { ... }` declaration; its JSONLogic `targeting` becomes the flag's
/// `rule`, an expression over a small library of JSONLogic helpers (`FlagdTranslator.prelude`) that the generated
/// file defines first. `fractional` is `split` (flagd's "v2" bucketing, byte for byte); a file may ask for flagd's
/// "v3" bucketing, which hashes the deterministic CBOR encoding of the bucketing value, with a top-level
/// `"$rulesd": {"fractional": "v3"}`.
///
/// In the ``Layout/lineAligned`` layout, used to load a rules directory, every declaration starts on the line of
/// its key in the JSON, so diagnostics and answers' `source` name the flag's line in the `.flagd.json` file.
public enum FlagdTranslator {
    /// The suffix of the flag files that rulesd loads beside Lua files.
    public static let fileSuffix = ".flagd.json"

    /// Whether a rule file path names a flagd flag file.
    public static func isFlagdFile(_ path: String) -> Bool { path.hasSuffix(fileSuffix) }

    /// How the generated Lua is laid out.
    public enum Layout: Sendable {
        /// Each declaration on the line of its key in the JSON (the helpers on line 1): for loading.
        case lineAligned
        /// One declaration after another, the helpers first: for people (`rulesctl import flagd`).
        case readable
    }

    /// A flag file that cannot be translated, with the 1-based line of the problem.
    public struct Failure: Error, Sendable, Equatable {
        public var line: Int
        public var message: String
    }

    /// The Lua source for a rules directory's `.flagd.json` file: its translation, or, when the file is not a
    /// valid flag file, a chunk that fails to load with the problem at its line.
    public static func loadableSource(_ bytes: [UInt8]) -> [UInt8] {
        do {
            return Array(try translate(bytes, layout: .lineAligned).utf8)
        } catch {
            let padding = String(repeating: "\n", count: max(error.line, 1) - 1)
            return Array((padding + "error(\(luaString("flagd: " + error.message)))\n").utf8)
        }
    }

    /// Translates one flag file.
    /// - Parameters:
    ///   - bytes: the file's content.
    ///   - layout: where declarations go.
    /// - Returns: Lua source declaring the file's flags.
    /// - Throws: ``Failure`` when the file is not JSON or not a flagd flag file.
    public static func translate(_ bytes: [UInt8], layout: Layout) throws(Failure) -> String {
        let lines = LineIndex(bytes)
        let limits = JSONLimits(maxDepth: 256)
        let document: JSONValue
        do { document = try JSONParser(limits: limits).parse(bytes) } catch {
            throw Failure(line: lines.line(at: error.offset), message: "not valid JSON: \(error.message)")
        }
        guard case .object(let top) = document else {
            throw Failure(line: 1, message: "a flag file is a JSON object with a 'flags' member")
        }
        let topRanges = memberRanges(bytes, range: 0..<bytes.count, limits: limits)
        guard case .object(let flags)? = top["flags"] else {
            throw Failure(line: 1, message: "a flag file needs a 'flags' object")
        }
        var evaluators: [String: JSONValue] = [:]
        if let value = top["$evaluators"] {
            guard case .object(let object) = value else {
                throw Failure(
                    line: lines.line(at: topRanges["$evaluators"]?.key ?? 0), message: "'$evaluators' must be an object"
                )
            }
            for (name, body) in object { evaluators[name] = body }
        }
        var fractionalV3 = false
        if let options = top["$rulesd"] {
            let line = lines.line(at: topRanges["$rulesd"]?.key ?? 0)
            guard case .object(let object) = options else {
                throw Failure(line: line, message: "'$rulesd' must be an object")
            }
            for (name, value) in object {
                guard name == "fractional", case .string(let version) = value, version == "v2" || version == "v3" else {
                    throw Failure(line: line, message: "'$rulesd' takes only \"fractional\": \"v2\" or \"v3\"")
                }
                fractionalV3 = version == "v3"
            }
        }
        var setMetadata: JSONObject?
        if let metadata = top["metadata"] {
            guard case .object(let object) = metadata else {
                throw Failure(
                    line: lines.line(at: topRanges["metadata"]?.key ?? 0), message: "'metadata' must be an object")
            }
            setMetadata = object
        }
        let flagRanges = topRanges["flags"].map { memberRanges(bytes, range: $0.value, limits: limits) } ?? [:]

        var out = LuaOutput(layout: layout)
        out.emit(prelude(layout), atLine: 1)
        for (key, definition) in flags {
            let line = lines.line(at: flagRanges[key]?.key ?? 0)
            var translator = FlagTranslation(
                key: key, evaluators: evaluators, fractionalV3: fractionalV3, setMetadata: setMetadata,
                readable: layout == .readable)
            let code: (setup: String, declaration: String)
            do { code = try translator.declaration(definition) } catch {
                throw Failure(line: line, message: "flag '\(key)': \(error.message)")
            }
            let separator = layout == .readable ? "\n" : " "
            out.emit(code.setup.isEmpty ? code.declaration : code.setup + separator + code.declaration, atLine: line)
        }
        return out.text
    }

    // MARK: Locating members

    private struct MemberRange {
        var key: Int
        var value: Range<Int>
    }

    /// The byte offsets of the members of the object at `range` (the first occurrence of each key).
    private static func memberRanges(_ bytes: [UInt8], range: Range<Int>, limits: JSONLimits) -> [String: MemberRange] {
        var result: [String: MemberRange] = [:]
        var members: [JSONMember] = []
        bytes.withUnsafeBytes { buffer in
            let slice = UnsafeRawBufferPointer(rebasing: buffer[range])
            do { try JSONObjectScanner(limits: limits).scan(slice, into: &members) } catch { return }
            for member in members {
                let key = member.keyString(in: slice)
                if result[key] == nil {
                    let base = range.lowerBound
                    let value = (member.valueRange.lowerBound + base)..<(member.valueRange.upperBound + base)
                    result[key] = MemberRange(key: member.keyRange.lowerBound + range.lowerBound, value: value)
                }
            }
        }
        return result
    }

    /// Byte offset → 1-based line.
    private struct LineIndex {
        var starts: [Int] = [0]

        init(_ bytes: [UInt8]) {
            for (index, byte) in bytes.enumerated() where byte == UInt8(ascii: "\n") { starts.append(index + 1) }
        }

        func line(at offset: Int) -> Int {
            var low = 0
            var high = starts.count
            while high - low > 1 {
                let mid = (low + high) / 2
                if starts[mid] <= offset { low = mid } else { high = mid }
            }
            return low + 1
        }
    }

    /// Generated text, placing each piece on a given line when aligned.
    private struct LuaOutput {
        let layout: Layout
        var text = ""
        var line = 1

        init(layout: Layout) { self.layout = layout }

        mutating func emit(_ code: String, atLine target: Int) {
            switch layout {
            case .lineAligned:
                if target > line {
                    text += String(repeating: "\n", count: target - line)
                    line = target
                } else if !text.isEmpty {
                    text += " "
                }
                text += code
            case .readable:
                text += code + "\n\n"
            }
        }
    }

    // MARK: Lua literals

    /// A Lua string literal for `text`, byte for byte.
    static func luaString(_ text: String) -> String {
        var result = "\""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): result += "\\\""
            case UInt8(ascii: "\\"): result += "\\\\"
            case 0x20..<0x7F: result.unicodeScalars.append(Unicode.Scalar(byte))
            default: result += "\\" + String(byte)
            }
        }
        return result + "\""
    }

    /// A Lua constructor for a JSON value (for variant values and metadata, where `null` cannot occur inside).
    static func luaLiteral(_ value: JSONValue) -> String {
        switch value {
        case .null: return "nil"
        case .bool(let b): return b ? "true" : "false"
        case .integer(let i): return i == Int64.min ? "math.mininteger" : String(i)
        case .number(let d): return luaNumber(d)
        case .string(let s): return luaString(s)
        case .array(let items): return "{" + items.map(luaLiteral).joined(separator: ", ") + "}"
        case .object(let object):
            return "{" + object.map { "[\(luaString($0.key))] = \(luaLiteral($0.value))" }.joined(separator: ", ") + "}"
        }
    }

    /// A float literal that Lua reads back as the same float.
    static func luaNumber(_ d: Double) -> String {
        let text = "\(d)"
        return text.contains(".") || text.contains("e") ? text : text + ".0"
    }

    // MARK: The helpers

    /// The JSONLogic helpers every generated file starts with (file-level locals, frozen after loading like any).
    static func prelude(_ layout: Layout) -> String {
        let lines = preludeLines
        switch layout {
        case .lineAligned: return lines.joined(separator: " ")
        case .readable: return "-- JSONLogic as flagd evaluates it.\n" + lines.joined(separator: "\n")
        }
    }

    private static let preludeLines = [
        "local J, VARIANTS, NULL = {}, {}, {}",
        "function J.t(v) local k = type(v) if v == nil or v == false then return false",
        "  elseif k == \"number\" then return v == v and v ~= 0 elseif k == \"string\" then return v ~= \"\"",
        "  elseif k == \"table\" then return next(v) ~= nil end return true end",
        "function J.num(v) local k = type(v) if k == \"number\" then return v elseif k == \"string\" then return tonumber(v)",
        "  elseif k == \"boolean\" then return v and 1 or 0 elseif v == nil then return 0 end return nil end",
        "function J.str(v) local k = type(v) if v == nil then return \"\" elseif k == \"string\" then return v",
        "  elseif k == \"number\" then if math.type(v) == \"integer\" then return string.format(\"%d\", v) end",
        "    if v == math.floor(v) and v > -2^53 and v < 2^53 then return string.format(\"%d\", math.tointeger(v)) end",
        "    for p = 1, 17 do local s = string.format(\"%.\" .. p .. \"g\", v) if tonumber(s) == v then return s end end",
        "    return tostring(v)",
        "  elseif k == \"table\" then local parts = {} for i, x in ipairs(v) do parts[i] = J.str(x) end",
        "    return table.concat(parts, \",\") end return tostring(v) end",
        "function J.seq(a, b) return type(a) == type(b) and a == b end",
        "function J.eq(a, b) if type(a) == type(b) then return a == b end if a == nil or b == nil then return false end",
        "  if type(a) == \"table\" or type(b) == \"table\" then return J.str(a) == J.str(b) end",
        "  return J.num(a) ~= nil and J.num(a) == J.num(b) end",
        "function J.cmp(a, b) if type(a) == \"string\" and type(b) == \"string\" then",
        "  if a < b then return -1 elseif a > b then return 1 end return 0 end",
        "  local x, y = J.num(a), J.num(b) if x == nil or y == nil or x ~= x or y ~= y then return nil end",
        "  if x < y then return -1 elseif x > y then return 1 end return 0 end",
        "function J.lt(a, b) local c = J.cmp(a, b) return c ~= nil and c < 0 end",
        "function J.le(a, b) local c = J.cmp(a, b) return c ~= nil and c <= 0 end",
        "function J.gt(a, b) local c = J.cmp(a, b) return c ~= nil and c > 0 end",
        "function J.ge(a, b) local c = J.cmp(a, b) return c ~= nil and c >= 0 end",
        "function J.var(data, path, default) local cur = data",
        "  if path == nil or path == \"\" then cur = data",
        "  elseif type(path) == \"number\" then cur = type(cur) == \"table\" and cur[math.tointeger(path + 1) or 0] or nil",
        "  else for part in string.gmatch(J.str(path), \"[^.]+\") do",
        "    if type(cur) ~= \"table\" then cur = nil break end local i = math.tointeger(tonumber(part))",
        "    if cur[part] ~= nil then cur = cur[part] elseif i ~= nil then cur = cur[i + 1] else cur = nil end end end",
        "  if cur == nil then return default end return cur end",
        "function J.missing(data, keys) if type(keys[1]) == \"table\" then keys = keys[1] end local r = {}",
        "  for _, k in ipairs(keys) do local v = J.var(data, k) if v == nil or v == \"\" then r[#r + 1] = k end end",
        "  return r end",
        "function J.missing_some(data, need, keys) local r = J.missing(data, {keys})",
        "  if #keys - #r >= J.num(need) then return {} end return r end",
        "function J.inop(a, b) if type(b) == \"string\" then return string.find(b, J.str(a), 1, true) ~= nil end",
        "  if type(b) == \"table\" then for _, x in ipairs(b) do if J.seq(x, a) then return true end end end",
        "  return false end",
        "function J.cat(...) local parts = {} for i = 1, select(\"#\", ...) do parts[i] = J.str((select(i, ...))) end",
        "  return table.concat(parts) end",
        "function J.substr(s, start, len) s = J.str(s) local n = #s start = math.tointeger(J.num(start) or 0) or 0",
        "  if start < 0 then start = math.max(n + start, 0) end",
        "  if len == nil then return string.sub(s, start + 1) end len = math.tointeger(J.num(len) or 0) or 0",
        "  if len < 0 then return string.sub(s, start + 1, math.max(n + len, start)) end",
        "  return string.sub(s, start + 1, start + len) end",
        "function J.add(...) local r = 0 for i = 1, select(\"#\", ...) do local x = J.num((select(i, ...)))",
        "  if x == nil then return nil end r = r + x end return r end",
        "function J.mul(...) local r = 1 for i = 1, select(\"#\", ...) do local x = J.num((select(i, ...)))",
        "  if x == nil then return nil end r = r * x end return r end",
        "function J.sub(a, b) local x = J.num(a) if x == nil then return nil end if b == nil then return -x end",
        "  local y = J.num(b) if y == nil then return nil end return x - y end",
        "function J.div(a, b) local x, y = J.num(a), J.num(b) if x == nil or y == nil or y == 0 then return nil end",
        "  return x / y end",
        "function J.mod(a, b) local x, y = J.num(a), J.num(b) if x == nil or y == nil or y == 0 then return nil end",
        "  return math.fmod(x, y) end",
        "function J.min(...) local r for i = 1, select(\"#\", ...) do local x = J.num((select(i, ...)))",
        "  if x == nil then return nil end if r == nil or x < r then r = x end end return r end",
        "function J.max(...) local r for i = 1, select(\"#\", ...) do local x = J.num((select(i, ...)))",
        "  if x == nil then return nil end if r == nil or x > r then r = x end end return r end",
        "function J.merge(...) local r = {} for i = 1, select(\"#\", ...) do local x = (select(i, ...))",
        "  if type(x) == \"table\" then for _, y in ipairs(x) do r[#r + 1] = y end elseif x ~= nil then r[#r + 1] = x end end",
        "  return r end",
        "function J.map(a, f) local r = {} if type(a) == \"table\" then for i, x in ipairs(a) do r[i] = f(x) end end",
        "  return r end",
        "function J.filter(a, f) local r = {} if type(a) == \"table\" then",
        "  for _, x in ipairs(a) do if J.t(f(x)) then r[#r + 1] = x end end end return r end",
        "function J.all(a, f) if type(a) ~= \"table\" or a[1] == nil then return false end",
        "  for _, x in ipairs(a) do if not J.t(f(x)) then return false end end return true end",
        "function J.some(a, f) if type(a) == \"table\" then for _, x in ipairs(a) do if J.t(f(x)) then return true end",
        "  end end return false end",
        "function J.reduce(a, f, acc) if type(a) == \"table\" then",
        "  for _, x in ipairs(a) do acc = f({current = x, accumulator = acc}) end end return acc end",
        "function J.sw(s, p) if type(s) ~= \"string\" or type(p) ~= \"string\" then return nil end",
        "  return starts_with(s, p) end",
        "function J.ew(s, p) if type(s) ~= \"string\" or type(p) ~= \"string\" then return nil end",
        "  return ends_with(s, p) end",
        "J.semver_ops = {[\"=\"] = true, [\"!=\"] = true, [\"<\"] = true, [\"<=\"] = true, [\">\"] = true, [\">=\"] = true,",
        "  [\"^\"] = true, [\"~\"] = true}",
        "function J.semver(v, op, ref) if type(v) == \"number\" then v = J.str(v) end",
        "  if type(ref) == \"number\" then ref = J.str(ref) end",
        "  if type(v) ~= \"string\" or type(ref) ~= \"string\" or not J.semver_ops[op] then return nil end",
        "  v = (string.gsub(v, \"^V\", \"v\")) ref = (string.gsub(ref, \"^V\", \"v\"))",
        "  if semver.compare(v, ref) == nil then return nil end return semver.match(v, op, ref) end",
        "function J.bucket(name, weight) if name == nil then name = NULL end local w = weight",
        "  if w == nil then w = 1 elseif type(w) ~= \"number\" then error(\"fractional: a weight must be a number\", 0)",
        "  else w = math.floor(w) end return {name, w} end",
        "function J.frac(unit, seed, buckets) if type(unit) ~= \"string\" then return nil end local total = 0",
        "  for _, b in ipairs(buckets) do if b[2] > 0 then total = total + b[2] end end",
        "  if total == 0 then return nil end local r = split(unit, buckets, seed) if r == NULL then return nil end",
        "  return r end",
        "function J.head(major, n) if n < 24 then return string.char(major * 32 + n)",
        "  elseif n < 256 then return string.char(major * 32 + 24, n)",
        "  elseif n < 65536 then return string.char(major * 32 + 25) .. string.pack(\">I2\", n)",
        "  elseif n < 4294967296 then return string.char(major * 32 + 26) .. string.pack(\">I4\", n) end",
        "  return string.char(major * 32 + 27) .. string.pack(\">I8\", n) end",
        "function J.cbor(v) local k = type(v) if v == nil then return \"\\246\" elseif v == true then return \"\\245\"",
        "  elseif v == false then return \"\\244\" elseif k == \"string\" then return J.head(3, #v) .. v",
        "  elseif math.type(v) == \"integer\" then if v >= 0 then return J.head(0, v) end return J.head(1, -1 - v)",
        "  elseif k == \"number\" then return \"\\251\" .. string.pack(\">d\", v)",
        "  elseif k == \"table\" then if v[1] ~= nil or next(v) == nil then local parts = {J.head(4, #v)}",
        "      for _, x in ipairs(v) do parts[#parts + 1] = J.cbor(x) end return table.concat(parts) end",
        "    local pairs_ = {} for key, x in pairs(v) do pairs_[#pairs_ + 1] = {J.cbor(key), J.cbor(x)} end",
        "    table.sort(pairs_, function(p, q) return p[1] < q[1] end) local parts = {J.head(5, #pairs_)}",
        "    for _, p in ipairs(pairs_) do parts[#parts + 1] = p[1] .. p[2] end return table.concat(parts) end",
        "  error(\"fractional: cannot hash a \" .. k, 0) end",
        "function J.frac3(v, buckets) if v == nil then return nil end return J.frac(J.cbor(v), \"\", buckets) end",
        "function J.frac3key(key, tk, buckets) if type(tk) ~= \"string\" then return nil end",
        "  return J.frac(J.cbor({key, tk}), \"\", buckets) end",
        "function J.variant(r, key) if r == nil then return nil end local k = type(r)",
        "  if k == \"boolean\" or k == \"number\" then r = J.str(r) elseif k ~= \"string\" then",
        "    error(\"targeting of flag '\" .. key .. \"' returned a \" .. k .. \", not a variant name\", 0) end",
        "  if VARIANTS[key][r] == nil then",
        "    error(\"targeting of flag '\" .. key .. \"' returned '\" .. r .. \"', which is not one of its variants\", 0) end",
        "  return r end",
    ]
}

/// The translation of one flag: its declaration, with targeting compiled to a Lua expression.
private struct FlagTranslation {
    struct Problem: Error {
        var message: String
    }

    /// The deepest JSONLogic nesting translated: Lua's parser stops at about 63 nested `if`s as generated here.
    static let maxDepth = 48

    let key: String
    let evaluators: [String: JSONValue]
    let fractionalV3: Bool
    let setMetadata: JSONObject?
    /// One field per line (for people); otherwise the whole declaration on one line, the line of its key.
    let readable: Bool
    var depth = 0
    var nextName = 0
    var refs: [String] = []

    init(
        key: String, evaluators: [String: JSONValue], fractionalV3: Bool, setMetadata: JSONObject?, readable: Bool
    ) {
        self.readable = readable
        self.key = key
        self.evaluators = evaluators
        self.fractionalV3 = fractionalV3
        self.setMetadata = setMetadata
    }

    /// The flag's declaration, and the statement before it that records its variant names for the rule.
    mutating func declaration(_ definition: JSONValue) throws(Problem) -> (setup: String, declaration: String) {
        guard case .object(let flag) = definition else { throw Problem(message: "a flag is a JSON object") }
        for name in flag.keys where !["state", "variants", "defaultVariant", "targeting", "metadata"].contains(name) {
            throw Problem(
                message: "unknown field '\(name)' (a flag has state, variants, defaultVariant, targeting, metadata)")
        }
        guard case .string(let state)? = flag["state"], state == "ENABLED" || state == "DISABLED" else {
            throw Problem(message: "'state' must be \"ENABLED\" or \"DISABLED\"")
        }
        guard case .object(let variants)? = flag["variants"], !variants.isEmpty else {
            throw Problem(message: "'variants' must be a non-empty object")
        }
        var defaultVariant: String?
        switch flag["defaultVariant"] {
        case nil, .null?: defaultVariant = nil
        case .string(let name)?: defaultVariant = name
        default: throw Problem(message: "'defaultVariant' must be a variant name or null")
        }
        let q = FlagdTranslator.luaString(key)
        var fields: [String] = []
        fields.append("variants = " + FlagdTranslator.luaLiteral(.object(variants)))
        // No default variant, or a disabled flag: flagd answers without a value, and the caller uses its own
        // default. `default = false` is the rule files' spelling of that.
        if state == "DISABLED" || defaultVariant == nil {
            fields.append("default = false")
        } else if let defaultVariant {
            fields.append("default = " + FlagdTranslator.luaString(defaultVariant))
        }
        if state == "DISABLED" { fields.append("enabled = false") }
        var metadata = setMetadata ?? JSONObject()
        if let value = flag["metadata"] {
            guard case .object(let own) = value else { throw Problem(message: "'metadata' must be an object") }
            for (name, entry) in own { metadata[name] = entry }
        }
        for (name, entry) in metadata {
            switch entry {
            case .string, .integer, .number, .bool: continue
            default: throw Problem(message: "metadata '\(name)' must be a string, number or boolean")
            }
        }
        if !metadata.isEmpty { fields.append("metadata = " + FlagdTranslator.luaLiteral(.object(metadata))) }
        var prefix = ""
        if flag["targeting"] == nil || flag["targeting"] == .object(JSONObject()) || flag["targeting"] == .null,
            defaultVariant == nil, state == "ENABLED"
        {
            // No targeting and no default: flagd's reason is DEFAULT (the caller's default), not STATIC.
            fields.append("rule = function(ctx) return nil end")
        }
        if let targeting = flag["targeting"], targeting != .object(JSONObject()), targeting != .null {
            do {
                let body = try expression(targeting, data: "ctx")
                fields.append("rule = function(ctx) return J.variant(\(body), \(q)) end")
                prefix =
                    "VARIANTS[\(q)] = {"
                    + variants.keys.map { "[\(FlagdTranslator.luaString($0))] = true" }
                    .joined(separator: ", ") + "}"
            } catch {
                // flagd loads such a flag and fails its evaluations with PARSE_ERROR; so does rulesd.
                let message = FlagdTranslator.luaString("invalid targeting: " + error.message)
                fields.append("invalid = \(message)")
            }
        }
        if readable { return (prefix, "flag \(q) {\n    " + fields.joined(separator: ",\n    ") + ",\n}") }
        return (prefix, "flag \(q) { " + fields.joined(separator: ", ") + " }")
    }

    /// A Lua expression computing the JSONLogic `value` over the data in the Lua variable `data`.
    mutating func expression(_ value: JSONValue, data: String) throws(Problem) -> String {
        depth += 1
        defer { depth -= 1 }
        // Lua's parser gives up on the generated code (C stack overflow, refusing the whole rule set) not far
        // beyond this; before that, the flag alone fails, with a message saying why.
        if depth > Self.maxDepth {
            throw Problem(message: "targeting nested deeper than \(Self.maxDepth) levels")
        }
        switch value {
        case .null, .bool, .integer, .number, .string:
            return FlagdTranslator.luaLiteral(value)
        case .array(let items):
            return "{"
                + (try items.map { (item) throws(Problem) in try expression(item, data: data) })
                .joined(separator: ", ") + "}"
        case .object(let object):
            guard object.count == 1, let op = object.keys.first, let raw = object[op] else {
                var parts: [String] = []
                for (name, member) in object {
                    parts.append("[\(FlagdTranslator.luaString(name))] = \(try expression(member, data: data))")
                }
                return "{" + parts.joined(separator: ", ") + "}"
            }
            let args: [JSONValue]
            if case .array(let items) = raw { args = items } else { args = [raw] }
            return try operation(op, args, raw: raw, data: data)
        }
    }

    private mutating func list(_ args: ArraySlice<JSONValue>, data: String) throws(Problem) -> String {
        try args.map { (arg) throws(Problem) in try expression(arg, data: data) }.joined(separator: ", ")
    }

    private mutating func arg(_ args: [JSONValue], _ index: Int, data: String) throws(Problem) -> String {
        index < args.count ? try expression(args[index], data: data) : "nil"
    }

    private mutating func freshName() -> String {
        nextName += 1
        return "v\(nextName)"
    }

    private mutating func operation(_ op: String, _ args: [JSONValue], raw: JSONValue, data: String) throws(Problem)
        -> String
    {
        switch op {
        case "$ref":
            guard case .string(let name) = raw, let body = evaluators[name] else {
                throw Problem(message: "'$ref' to an unknown evaluator \(raw)")
            }
            guard !refs.contains(name) else { throw Problem(message: "evaluator '\(name)' refers to itself") }
            refs.append(name)
            defer { refs.removeLast() }
            return try expression(body, data: data)
        case "var":
            if data == "ctx", case .string(let path)? = args.first {
                if path == "$flagd.flagKey" { return FlagdTranslator.luaString(key) }
                if path == "$flagd.timestamp" { return "math.floor(now())" }
                if path == "$flagd" {
                    return "{flagKey = \(FlagdTranslator.luaString(key)), timestamp = math.floor(now())}"
                }
            }
            if args.isEmpty { return data }
            let path = try expression(args[0], data: data)
            if args.count > 1 { return "J.var(\(data), \(path), \(try expression(args[1], data: data)))" }
            return "J.var(\(data), \(path))"
        case "missing":
            return "J.missing(\(data), {\(try list(args[...], data: data))})"
        case "missing_some":
            return "J.missing_some(\(data), \(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "if", "?:":
            if args.isEmpty { return "nil" }
            var code = "(function() "
            var index = 0
            while index + 1 < args.count {
                code += "if J.t(\(try expression(args[index], data: data))) then return "
                code += try expression(args[index + 1], data: data) + " end "
                index += 2
            }
            code += "return " + (index < args.count ? try expression(args[index], data: data) : "nil") + " end)()"
            return code
        case "and", "or":
            if args.isEmpty { return "nil" }
            let name = freshName()
            var code = "(function() local \(name) = \(try expression(args[0], data: data)) "
            for next in args.dropFirst() {
                code += "if \(op == "and" ? "not " : "")J.t(\(name)) then return \(name) end "
                code += "\(name) = \(try expression(next, data: data)) "
            }
            return code + "return \(name) end)()"
        case "!":
            return "(not J.t(\(try arg(args, 0, data: data))))"
        case "!!":
            return "J.t(\(try arg(args, 0, data: data)))"
        case "==": return "J.eq(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "!=": return "(not J.eq(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data))))"
        case "===": return "J.seq(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "!==": return "(not J.seq(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data))))"
        case "<", "<=", ">", ">=":
            let function = ["<": "J.lt", "<=": "J.le", ">": "J.gt", ">=": "J.ge"][op]!
            if args.count == 3 {
                let name = freshName()
                return "(function() local \(name) = \(try expression(args[1], data: data)) return "
                    + "\(function)(\(try expression(args[0], data: data)), \(name)) and "
                    + "\(function)(\(name), \(try expression(args[2], data: data))) end)()"
            }
            return "\(function)(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "in": return "J.inop(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "cat": return "J.cat(\(try list(args[...], data: data)))"
        case "substr":
            let length = args.count > 2 ? ", " + (try expression(args[2], data: data)) : ""
            return "J.substr(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data))\(length))"
        case "+": return "J.add(\(try list(args[...], data: data)))"
        case "*": return "J.mul(\(try list(args[...], data: data)))"
        case "-":
            let second = args.count > 1 ? ", " + (try expression(args[1], data: data)) : ""
            return "J.sub(\(try arg(args, 0, data: data))\(second))"
        case "/": return "J.div(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "%": return "J.mod(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "min": return "J.min(\(try list(args[...], data: data)))"
        case "max": return "J.max(\(try list(args[...], data: data)))"
        case "merge": return "J.merge(\(try list(args[...], data: data)))"
        case "map", "filter", "all", "some", "none":
            let name = freshName()
            let body = try arg(args, 1, data: name)
            let call =
                "J.\(op == "none" ? "some" : op)(\(try arg(args, 0, data: data)), function(\(name)) return \(body) end)"
            return op == "none" ? "(not \(call))" : call
        case "reduce":
            let name = freshName()
            let body = try arg(args, 1, data: name)
            return "J.reduce(\(try arg(args, 0, data: data)), function(\(name)) return \(body) end, "
                + "\(try arg(args, 2, data: data)))"
        case "starts_with": return "J.sw(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "ends_with": return "J.ew(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)))"
        case "sem_ver":
            return "J.semver(\(try arg(args, 0, data: data)), \(try arg(args, 1, data: data)), "
                + "\(try arg(args, 2, data: data)))"
        case "fractional":
            return try fractional(args, data: data)
        default:
            throw Problem(message: "unknown JSONLogic operator '\(op)'")
        }
    }

    /// flagd's `fractional`: `[bucketBy?, [variant, weight?]...]`. Without `bucketBy`, flagd buckets the
    /// targeting key within the flag (v2: the hash of flag key and targeting key, which is `split`'s default).
    private mutating func fractional(_ args: [JSONValue], data: String) throws(Problem) -> String {
        guard let first = args.first else { throw Problem(message: "'fractional' needs buckets") }
        var bucketArgs = args[...]
        var bucketBy: String?
        if case .array = first {
        } else {
            bucketBy = try expression(first, data: data)
            bucketArgs = args.dropFirst()
        }
        var buckets: [String] = []
        for bucket in bucketArgs {
            guard case .array(let parts) = bucket, !parts.isEmpty, parts.count <= 2 else {
                throw Problem(message: "a 'fractional' bucket is [variant, weight] or [variant]")
            }
            let weight = parts.count > 1 ? try expression(parts[1], data: data) : "nil"
            buckets.append("J.bucket(\(try expression(parts[0], data: data)), \(weight))")
        }
        if buckets.isEmpty { throw Problem(message: "'fractional' needs buckets") }
        let list = "{" + buckets.joined(separator: ", ") + "}"
        let q = FlagdTranslator.luaString(key)
        let targetingKey = data == "ctx" ? "ctx.targetingKey" : "nil"
        switch (bucketBy, fractionalV3) {
        case (nil, false): return "J.frac(\(targetingKey), \(q), \(list))"
        case (let value?, false): return "J.frac(\(value), \"\", \(list))"
        case (nil, true): return "J.frac3key(\(q), \(targetingKey), \(list))"
        case (let value?, true): return "J.frac3(\(value), \(list))"
        }
    }
}
