import ArgumentParser
import RuleEngine
import RuleModel

/// `--rules DIR`: the rules directory of offline commands.
///
/// Declared both by `eval` and by each of its subcommands, so that it may stand before or after the subcommand's
/// name (`rulesctl eval --rules d flag k` and `rulesctl eval flag k --rules d`) and shows in every help screen. It
/// is optional at the parser level and checked by ``directory()``: a required option on the parent would make
/// `rulesctl eval flag --help` print the parent's help instead of the subcommand's.
struct RulesOptions: ParsableArguments {
    @Option(
        name: [.short, .long],
        help: ArgumentHelp("The rules directory to load, read exactly as rulesd reads it.", valueName: "dir"))
    var rules: String?

    /// The directory, or the usage error of a missing `--rules`.
    func directory() throws -> String {
        guard let rules, !rules.isEmpty else { throw ValidationError("Missing expected option '--rules <dir>'") }
        return rules
    }
}

/// `--json`: print answers as the daemon's JSON.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the answer's JSON result object (or error object) on one line, exactly as rulesd sends it.")
    var json = false
}

/// The evaluation context of flag commands: `--context JSON`, `-c key=value ...`, `--at TIME`.
struct ContextOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The evaluation context, a JSON object such as '{\"user_id\":\"u-42\",\"plan\":\"pro\"}'.",
            valueName: "json"))
    var context: String?

    @Option(
        name: .customShort("c"),
        help: ArgumentHelp(
            """
            Set one context field (repeatable). A dotted key makes nested objects (user.plan=pro). The value is \
            JSON when it parses as JSON (42, 2.5, true, false, null, "quoted", [..], {..}), otherwise a string.
            """,
            valueName: "key=value"))
    var fields: [String] = []

    @Option(
        help: ArgumentHelp(
            "Evaluate as of this time (what now() returns): seconds since the epoch, or RFC 3339 such as "
                + "2026-04-01T09:00:00Z. Default: the current time.",
            valueName: "time"))
    var at: String?

    /// Checks the fields while ArgumentParser can still show the subcommand's usage with the error.
    func validate() throws {
        _ = try input()
    }

    /// The context as JSON text and the evaluation time.
    func input() throws -> EvaluationInput {
        try EvaluationInput(object: context, optionName: "--context", fields: fields, at: at)
    }
}

/// The request of route commands: `--request JSON`, `-c key=value ...`, `--at TIME`.
struct RequestOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The request to route, a JSON object such as '{\"method\":\"GET\",\"path\":\"/api/users/42\"}'.",
            valueName: "json"))
    var request: String?

    @Option(
        name: .customShort("c"),
        help: ArgumentHelp(
            """
            Set one request field (repeatable). A dotted key makes nested objects (headers.x-region=eu). The value \
            is JSON when it parses as JSON (42, 2.5, true, false, null, "quoted", [..], {..}), otherwise a string.
            """,
            valueName: "key=value"))
    var fields: [String] = []

    @Option(
        help: ArgumentHelp(
            "Route as of this time (what now() returns): seconds since the epoch, or RFC 3339 such as "
                + "2026-04-01T09:00:00Z. Default: the current time.",
            valueName: "time"))
    var at: String?

    /// Checks the fields while ArgumentParser can still show the subcommand's usage with the error.
    func validate() throws {
        _ = try input()
    }

    /// The request as JSON text and the evaluation time.
    func input() throws -> EvaluationInput {
        try EvaluationInput(object: request, optionName: "--request", fields: fields, at: at)
    }
}

/// A context or request ready for the evaluator: compact JSON text and the time `now()` returns.
struct EvaluationInput: Sendable {
    /// The object as JSON text.
    var json: [UInt8]
    /// Seconds since the epoch.
    var now: Double

    init(json: [UInt8], now: Double) {
        self.json = json
        self.now = now
    }

    /// Builds the object from a JSON text (optional) with `key=value` fields set into it, in order.
    /// - Throws: `ValidationError` for text that is not a JSON object, a malformed field or an unreadable time.
    init(object text: String?, optionName: String, fields: [String], at: String?) throws {
        var object = JSONObject()
        if let text {
            let value: JSONValue
            do { value = try JSONParser().parse(text) } catch {
                throw ValidationError("\(optionName) is not valid JSON: \(error.message) (at byte \(error.offset))")
            }
            guard let parsed = value.objectValue else { throw ValidationError("\(optionName) must be a JSON object") }
            object = parsed
        }
        for field in fields {
            try FieldAssignment(field).apply(to: &object)
        }
        json = Array(JSONWriter.string(.object(object)).utf8)
        if let at {
            guard let seconds = TimeArgument.parse(at) else {
                throw ValidationError(
                    "--at must be seconds since the epoch or an RFC 3339 time such as 2026-04-01T09:00:00Z, "
                        + "not '\(at)'")
            }
            now = seconds
        } else {
            now = RuleClock.now()
        }
    }
}

/// One `-c key=value` argument.
struct FieldAssignment: Sendable, Hashable {
    /// The key split at its dots: `user.plan` is `["user", "plan"]`.
    var path: [String]
    var value: JSONValue

    /// Parses `key=value`: the key is everything before the first `=`.
    init(_ text: String) throws {
        guard let equals = text.firstIndex(of: "=") else {
            throw ValidationError("-c expects key=value, not '\(text)'")
        }
        let key = String(text[..<equals])
        path = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if key.isEmpty || path.contains(where: \.isEmpty) {
            throw ValidationError("-c \(text): the key must be a name or a dotted path such as user.plan")
        }
        value = Self.typedValue(String(text[text.index(after: equals)...]))
    }

    /// The value of a field: JSON when the whole text is a JSON value (so 42 is an integer, 2.5 a float, "42" the
    /// string 42), otherwise the text itself. Text with surrounding white space stays a string, so that ' 42'
    /// means what it shows.
    static func typedValue(_ text: String) -> JSONValue {
        guard let first = text.unicodeScalars.first, let last = text.unicodeScalars.last,
            !first.properties.isWhitespace, !last.properties.isWhitespace
        else { return .string(text) }
        return (try? JSONParser().parse(text)) ?? .string(text)
    }

    /// Sets the value at the path, making the objects on the way; a later field replaces an earlier one.
    func apply(to object: inout JSONObject) throws {
        try Self.set(value, at: path[...], in: &object, walked: [])
    }

    private static func set(
        _ value: JSONValue, at path: ArraySlice<String>, in object: inout JSONObject, walked: [String]
    ) throws {
        let name = path.first!
        if path.count == 1 {
            object[name] = value
            return
        }
        var child: JSONObject
        switch object[name] {
        case nil: child = JSONObject()
        case .object(let existing)?: child = existing
        case let other?:
            let at = (walked + [name]).joined(separator: ".")
            throw ValidationError(
                "-c \(path.joined(separator: ".")): '\(at)' is already set to \(other), not an object")
        }
        object[name] = nil  // keep a single copy of the child while it is edited
        try set(value, at: path.dropFirst(), in: &child, walked: walked + [name])
        object[name] = .object(child)
    }
}

/// Parses `--at`: seconds since the epoch, or an RFC 3339 date-time.
enum TimeArgument {
    /// Seconds since the epoch for `12345`, `12345.5`, `2026-04-01` (midnight UTC), `2026-04-01T09:00:00Z`,
    /// `2026-04-01T09:00:00.250+02:00`; nil for anything else.
    static func parse(_ text: String) -> Double? {
        if let seconds = Double(text) { return seconds.isFinite ? seconds : nil }
        return rfc3339(Array(text.utf8))
    }

    private static func rfc3339(_ s: [UInt8]) -> Double? {
        var i = 0
        func number(_ digits: Int) -> Int? {
            guard i + digits <= s.count else { return nil }
            var value = 0
            for byte in s[i..<(i + digits)] {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            i += digits
            return value
        }
        func expect(_ characters: String) -> Bool {
            guard i < s.count, characters.utf8.contains(s[i]) else { return false }
            i += 1
            return true
        }
        guard let year = number(4), expect("-"), let month = number(2), expect("-"), let day = number(2),
            (1...12).contains(month), (1...daysInMonth(year, month)).contains(day)
        else { return nil }
        let days = Double(daysSinceEpoch(year: year, month: month, day: day))
        if i == s.count { return days * 86_400 }
        guard expect("Tt "), let hour = number(2), expect(":"), let minute = number(2), hour < 24, minute < 60
        else { return nil }
        var seconds = 0.0
        if i < s.count, s[i] == UInt8(ascii: ":") {
            i += 1
            guard let whole = number(2), whole < 61 else { return nil }  // 60: a leap second
            seconds = Double(whole)
            if i < s.count, s[i] == UInt8(ascii: ".") {
                i += 1
                var scale = 0.1
                let start = i
                while i < s.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(s[i]) {
                    seconds += Double(s[i] - UInt8(ascii: "0")) * scale
                    scale /= 10
                    i += 1
                }
                guard i > start else { return nil }
            }
        }
        var offset = 0
        if expect("Zz") {
            offset = 0
        } else if i < s.count, s[i] == UInt8(ascii: "+") || s[i] == UInt8(ascii: "-") {
            let sign = s[i] == UInt8(ascii: "-") ? -1 : 1
            i += 1
            guard let hours = number(2), expect(":"), let minutes = number(2), hours < 24, minutes < 60 else {
                return nil
            }
            offset = sign * (hours * 3600 + minutes * 60)
        } else {
            return nil  // a time without a zone would depend on the machine's time zone
        }
        guard i == s.count else { return nil }
        return days * 86_400 + Double(hour * 3600 + minute * 60 - offset) + seconds
    }

    private static func isLeapYear(_ year: Int) -> Bool {
        year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
    }

    private static func daysInMonth(_ year: Int, _ month: Int) -> Int {
        switch month {
        case 2: return isLeapYear(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (the usual era-based computation: years
    /// counted from March, so that the leap day falls at the end of the year).
    private static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let monthFromMarch = (month + 9) % 12
        let dayOfYear = (153 * monthFromMarch + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
