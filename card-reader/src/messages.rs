//! What each binding error code of API.md means to the worker at the door, in Chinese and
//! English, with what to do next. The server's own `message` is shown beside it.

/// Every code the terminal's calls can answer with (API.md "Charges" and "Conventions").
pub const KNOWN_CODES: [&str; 23] = [
    "card_blocked",
    "card_mismatch",
    "order_not_chargeable",
    "amount_over_agreed",
    "insufficient_credit",
    "no_second_factor",
    "provider_suspended",
    "idempotency_mismatch",
    "invalid_amount",
    "code_invalid",
    "too_many_attempts",
    "charge_expired",
    "charge_not_pending",
    "resend_limited",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "payload_too_large",
    "invalid_request",
    "internal",
    "year_closed",
];

/// The explanation of `code`, or `None` for a code this terminal does not know.
pub fn explain(code: &str) -> Option<&'static str> {
    Some(match code {
        "card_blocked" => "此卡已挂失停用，不能消费 / this card is blocked (reported lost or replaced): it can never charge; the elder's district issues the new card",
        "card_mismatch" => "此卡不属于该订单的老人 / this card is not the order's elder's: check you have the right elder and order",
        "order_not_chargeable" => "订单不可结算（未议价、已完成或已有待确认的收费）/ the order cannot be charged: it is not agreed, already completed, or has a charge waiting for its code (an unfinished swipe of yours: `card-reader resume`)",
        "amount_over_agreed" => "金额超过议定价格 / the amount is above the price agreed for this order",
        "insufficient_credit" => "老人服务额度不足 / the elder does not have enough credit left this month",
        "no_second_factor" => "老人未绑定手机或密码器，无法验证 / the elder has neither a phone nor a hardware token for this check; the district must bind one",
        "provider_suspended" => "服务商已被暂停，不能收费 / your provider is suspended and cannot start charges",
        "idempotency_mismatch" => "同一次刷卡的请求内容不一致 / this swipe's key was already used for a different charge; start a new swipe",
        "invalid_amount" => "金额格式无效 / the amount is not valid: positive yuan with at most 2 decimals",
        "code_invalid" => "验证码错误 / wrong code",
        "too_many_attempts" => "验证码错误次数过多，本次收费已作废，额度已释放 / too many wrong codes: the charge is voided and the credit released; swipe again to retry",
        "charge_expired" => "收费已超时作废，额度已释放 / the charge expired before its code was entered; the credit is released; swipe again",
        "charge_not_pending" => "该收费已不在待确认状态 / this charge is no longer waiting for a code",
        "resend_limited" => "短信重发太频繁（每次间隔60秒，最多3条）/ SMS resent too soon: wait 60 s between messages, at most 3 per charge",
        "bad_request" => "请求格式错误 / the request was malformed (a terminal bug: report it)",
        "unauthorized" => "终端密钥无效 / the terminal key is missing or not valid: check --key or LEDGER_KEY",
        "forbidden" => "无权操作（订单或收费属于其他服务商）/ not allowed: the order or charge is another provider's, or the key is not a provider key",
        "not_found" => "未找到 / not found: check the order or charge number",
        "conflict" => "操作与当前状态冲突 / the request conflicts with the current state",
        "payload_too_large" => "请求过大 / the request is too large",
        "invalid_request" => "请求字段无效 / a field is not valid",
        "internal" => "服务器内部错误，请稍后再试 / the server failed; try again shortly",
        "year_closed" => "该年度已结账 / the fiscal year is closed",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_is_explained_in_both_languages() {
        for code in KNOWN_CODES {
            let text = explain(code).unwrap_or_else(|| panic!("{code} has no text"));
            assert!(text.contains("/ "), "{code}: {text}");
            assert!(!text.is_ascii(), "{code} has Chinese: {text}");
        }
        assert_eq!(explain("some_new_code"), None);
    }
}
