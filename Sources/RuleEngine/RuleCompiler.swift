import CRuleSandbox
import RuleModel

/// Turns rule files into a validated ``RuleSet`` and the Lua states that evaluate it.
public enum RuleCompiler {
    /// Loads `sources` into a fresh sandboxed state and validates the whole rule set.
    ///
    /// All-or-nothing: any compile error, failing chunk, budget breach, validation error or failing rule test
    /// rejects the whole set, and every problem is reported.
    /// - Parameters:
    ///   - sources: the rule files, with paths relative to the rules directory.
    ///   - limits: the budgets for loading and for later evaluations.
    ///   - cancellation: stops loading between files and between Lua steps when requested; the failure is then
    ///     ``RuleLoadFailure/cancelled``.
    ///   - runTests: whether the rule tests the files declare run in the candidate (after it validates) and
    ///     gate it; a failing test, or a suite over ``RuleEngineLimits/testBudget``, rejects the set.
    /// - Returns: the rule set and a first evaluator for it.
    public static func compile(
        _ sources: [RuleSource], limits: RuleEngineLimits = RuleEngineLimits(),
        cancellation: RuleLoadCancellation? = nil, runTests: Bool = true
    ) throws(RuleLoadFailure) -> (ruleSet: RuleSet, evaluator: RuleEvaluator) {
        let sorted = sources.sorted { Array($0.path.utf8).lexicographicallyPrecedes(Array($1.path.utf8)) }
        var oversized: [RuleDiagnostic] = []
        for source in sorted {
            let isData = RuleDataSet.isDataFilePath(source.path)
            let cap = isData ? limits.maxDataBytes : limits.maxFileBytes
            guard source.content.count > cap else { continue }
            oversized.append(
                RuleDiagnostic(
                    location: SourceLocation(file: source.path, line: 0),
                    message: "file is larger than \(cap) bytes" + (isData ? " (max_data_bytes)" : "")))
        }
        if !oversized.isEmpty { throw RuleLoadFailure(diagnostics: oversized) }
        try RuleQuotas.checkFiles(sorted, limits: limits)
        let state = try loadState(sorted, limits: limits, cancellation: cancellation, dataSets: nil)
        do {
            try RuleQuotas.checkFlags(rs_flag_count(state), limits: limits)
        } catch {
            rs_state_free(state)
            throw error
        }
        let ruleSet: RuleSet
        do {
            ruleSet = try extractModel(state, sources: sorted, limits: limits)
        } catch {
            rs_state_free(state)
            throw error
        }
        let evaluator = RuleEvaluator(state: state, ruleSet: ruleSet)
        if runTests, !ruleSet.tests.isEmpty {
            let report = RuleTestRunner.run(in: evaluator, budget: limits.testBudget)
            // Lines tests made rules log are not the answers' logs.
            _ = evaluator.takeLogs()
            if !report.allPassed {
                // A busy machine can push a suite over its budget: that failure may pass on another try.
                throw RuleLoadFailure(
                    diagnostics: report.diagnostics, cause: report.overBudget ? .resourceLimit : .content)
            }
        }
        return (ruleSet, evaluator)
    }

    /// Loads an already validated rule set into another fresh state (one per worker thread).
    /// - Parameter cancellation: stops loading when requested, as in ``compile(_:limits:cancellation:)``.
    /// - Returns: an evaluator that answers exactly like every other evaluator of `ruleSet`.
    public static func makeEvaluator(
        for ruleSet: RuleSet, cancellation: RuleLoadCancellation? = nil
    ) throws(RuleLoadFailure) -> RuleEvaluator {
        let state = try loadState(
            ruleSet.sources, limits: ruleSet.limits, cancellation: cancellation, dataSets: ruleSet.dataSets)
        // Loading is deterministic (no clock, no randomness at load time); a difference would mean a
        // sandbox bug, and answers would then depend on the worker.
        guard rs_flag_count(state) == ruleSet.flags.count, rs_route_count(state) == ruleSet.routes.count,
            rs_config_count(state) == ruleSet.configs.count, rs_state_data_count(state) == ruleSet.dataSets.count
        else {
            rs_state_free(state)
            throw RuleLoadFailure("the rule set loaded differently in a second Lua state")
        }
        return RuleEvaluator(state: state, ruleSet: ruleSet)
    }

    /// - Parameter dataSets: the data sets an earlier state of the same rule set built, shared instead of
    ///   parsing the data files again; nil to offer the data files among `sources` to `data "name"`.
    private static func loadState(
        _ sources: [RuleSource], limits: RuleEngineLimits, cancellation: RuleLoadCancellation?,
        dataSets: [RuleDataSet]?
    ) throws(RuleLoadFailure) -> OpaquePointer {
        var sandboxLimits = limits.sandboxLimits
        var error = [CChar](repeating: 0, count: 256)
        guard let state = rs_state_new(&sandboxLimits, &error, error.count) else {
            let reason = error.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw RuleLoadFailure("cannot create a Lua state: \(reason)", cause: .resourceLimit)
        }
        // Cleared before the state is returned: an evaluator never refers to the cancellation.
        rs_state_set_cancel(state, cancellation?.token)
        guard offerData(to: state, sources: sources, dataSets: dataSets) else {
            rs_state_free(state)
            throw RuleLoadFailure("not enough memory for the data files", cause: .resourceLimit)
        }
        var cause = RuleLoadFailure.Cause.content
        for source in sources where !RuleDataSet.isDataFilePath(source.path) {
            if cancellation?.isCancelled == true {
                rs_state_free(state)
                throw .cancelled
            }
            // A flagd flag file loads as the Lua it translates to, under its own path.
            let content =
                FlagdTranslator.isFlagdFile(source.path)
                ? FlagdTranslator.loadableSource(source.content) : source.content
            let result = content.withUnsafeBufferPointer { content in
                content.withMemoryRebound(to: CChar.self) { chars in
                    rs_load_file(state, source.path, chars.baseAddress, chars.count)
                }
            }
            if result == 2 {
                cause = .resourceLimit
                // Out of memory, every later file would fail the same way: one message says what happened.
                let last = rs_diagnostic_at(state, rs_diagnostic_count(state) - 1)
                if String(cString: last.message).contains("memory limit exceeded") {
                    rs_state_free(state)
                    throw RuleLoadFailure(
                        diagnostics: [
                            RuleDiagnostic(
                                location: SourceLocation(file: source.path, line: 0),
                                message: "loading stopped here: "
                                    + memoryLimitMessage(limits, files: ruleFileCount(sources)))
                        ], cause: .resourceLimit)
                }
            }
        }
        if cancellation?.isCancelled == true {
            rs_state_free(state)
            throw .cancelled
        }
        let problems = Int(rs_finish_loading(state))
        if problems > 0 {
            let diagnostics = (0..<problems).map { index -> RuleDiagnostic in
                let d = rs_diagnostic_at(state, index)
                var message = String(cString: d.message)
                if message.hasPrefix("validating the rule set failed"), message.contains("memory limit exceeded") {
                    cause = .resourceLimit
                    message =
                        "validating the rule set stopped: " + memoryLimitMessage(limits, files: ruleFileCount(sources))
                }
                return RuleDiagnostic(
                    location: SourceLocation(file: String(cString: d.file), line: Int(d.line)), message: message)
            }
            rs_state_free(state)
            throw RuleLoadFailure(diagnostics: diagnostics, cause: cause)
        }
        rs_state_set_cancel(state, nil)
        return state
    }

    /// Makes the data files available to `data "name"` in `state`: the shared data sets when given, else the
    /// raw files among `sources` (parsed only when a rule file asks for them).
    private static func offerData(
        to state: OpaquePointer, sources: [RuleSource], dataSets: [RuleDataSet]?
    ) -> Bool {
        if let dataSets {
            return dataSets.allSatisfy { rs_state_offer_data_set(state, $0.path, $0.handle) == 0 }
        }
        return sources.filter { RuleDataSet.isDataFilePath($0.path) }.allSatisfy { source in
            source.content.withUnsafeBufferPointer { content in
                content.withMemoryRebound(to: CChar.self) { chars in
                    rs_state_offer_data_file(state, source.path, chars.baseAddress, chars.count) == 0
                }
            }
        }
    }

    private static func ruleFileCount(_ sources: [RuleSource]) -> Int {
        sources.count { !RuleDataSet.isDataFilePath($0.path) }
    }

    /// The one message for a rule set that does not fit in a Lua state.
    private static func memoryLimitMessage(_ limits: RuleEngineLimits, files: Int) -> String {
        "the \(files) rule files need more than the memory limit of \(limits.memoryLimit >> 20) MiB per Lua state "
            + "(memory_limit); raise it or declare less"
    }

    private static func extractModel(_ state: OpaquePointer, sources: [RuleSource], limits: RuleEngineLimits)
        throws(RuleLoadFailure) -> RuleSet
    {
        let parser = JSONParser()
        var flags: [FlagDefinition] = []
        for index in 0..<rs_flag_count(state) {
            let info = rs_flag_at(state, index)
            var variants: [FlagVariant] = []
            for v in 0..<Int(info.variant_count) {
                let variant = rs_flag_variant_at(state, index, v)
                let json = bytes(variant.json, variant.json_len)
                let value: JSONValue
                do { value = try parser.parse(json) } catch {
                    throw RuleLoadFailure("internal: variant value of \(String(cString: info.key)) is not JSON")
                }
                variants.append(FlagVariant(name: String(cString: variant.name), value: value, json: json))
            }
            var metadata: JSONValue?
            if info.metadata_json != nil {
                do { metadata = try parser.parse(bytes(info.metadata_json, info.metadata_json_len)) } catch {
                    throw RuleLoadFailure("internal: metadata of \(String(cString: info.key)) is not JSON")
                }
            }
            flags.append(
                FlagDefinition(
                    key: String(cString: info.key),
                    description: info.description.map { String(cString: $0) },
                    variants: variants,
                    defaultVariant: Int(info.default_variant),
                    enabled: info.enabled != 0,
                    hasRule: info.has_rule != 0,
                    location: SourceLocation(file: String(cString: info.file), line: Int(info.line)),
                    metadata: metadata))
        }
        var routes: [RouteDefinition] = []
        for index in 0..<rs_route_count(state) {
            let info = rs_route_at(state, index)
            routes.append(
                RouteDefinition(
                    name: String(cString: info.name),
                    description: info.description.map { String(cString: $0) },
                    priority: info.priority,
                    hasMatch: info.has_match != 0,
                    staticTarget: info.static_target.map { String(cString: $0) },
                    location: SourceLocation(file: String(cString: info.file), line: Int(info.line))))
        }
        var configs: [ConfigEntry] = []
        for index in 0..<rs_config_count(state) {
            let info = rs_config_at(state, index)
            let json = bytes(info.json, info.json_len)
            let value: JSONValue
            do { value = try parser.parse(json) } catch {
                throw RuleLoadFailure("internal: config value \(String(cString: info.key)) is not JSON")
            }
            configs.append(
                ConfigEntry(
                    key: String(cString: info.key), value: value, json: json,
                    location: SourceLocation(file: String(cString: info.file), line: Int(info.line))))
        }
        var tests: [RuleTestDefinition] = []
        for index in 0..<rs_test_count(state) {
            let info = rs_test_at(state, index)
            var definition = JSONValue.null
            if info.is_function == 0 {
                do { definition = try parser.parse(bytes(info.json, info.json_len)) } catch {
                    throw RuleLoadFailure("internal: test \(String(cString: info.name)) is not JSON")
                }
            }
            tests.append(
                RuleTestDefinition(
                    name: String(cString: info.name),
                    location: SourceLocation(file: String(cString: info.file), line: Int(info.line)),
                    definition: definition, functionIndex: info.is_function != 0 ? index : nil))
        }
        let dataSets = (0..<rs_state_data_count(state)).compactMap { index -> RuleDataSet? in
            let info = rs_state_data_at(state, index)
            guard let handle = info.data else { return nil }
            return RuleDataSet(name: String(cString: info.name), path: String(cString: info.path), handle: handle)
        }
        return RuleSet(
            revision: RuleRevision(sources: sources), sources: sources, flags: flags, routes: routes,
            configs: configs, tests: tests, dataSets: dataSets, limits: limits)
    }

    private static func bytes(_ pointer: UnsafePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return pointer.withMemoryRebound(to: UInt8.self, capacity: count) {
            Array(UnsafeBufferPointer(start: $0, count: count))
        }
    }
}
