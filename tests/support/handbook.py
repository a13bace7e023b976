"""Two 40-page company handbooks, in English and in Chinese, and questions whose answers sit on known pages.

For the retrieval tests: every page covers a different policy in the same vocabulary (leave, pay, days, company,
approval), and the questions say what a reader would ask, in other words than the page's.
"""

from __future__ import annotations

HANDBOOK_EN = (
    (
        "Welcome to Northwind Logistics. Since 1998 we have moved freight for retailers, hospitals and farms across"
        " the region, and today our 1,400 colleagues work from the head office in Leeds, four depots and two cross-"
        "dock warehouses. This handbook explains the rules and benefits that apply to every employee. Where a local"
        " agreement says something different, the local agreement wins. Read it once in full during your first week"
        " and come back to the page you need when a question comes up; your manager and the People team are there "
        "for everything it does not answer."
    ),
    (
        "Our normal working week is 37.5 hours, Monday to Friday. Office staff choose their own start time between "
        "7:00 and 10:00, provided they are present for the core hours of 10:00 to 15:00, when most meetings take "
        "place. Lunch breaks of at least 30 minutes are unpaid and must be taken away from your desk. Depot and "
        "warehouse staff work rotating shifts published four weeks ahead on the rota board; swapping a shift with a"
        " colleague is allowed when the shift lead approves it in the rota app."
    ),
    (
        "Staff in office roles may work from home for up to three days a week once they have passed probation. "
        "Agree your pattern with your manager and record it in the HR portal. Home working needs a quiet space, a "
        "secure internet connection and the company laptop; personal computers may not be used for company work. We"
        " pay a home office allowance of 26 pounds a month towards electricity and heating, added to your salary "
        "automatically. Working from abroad, even for a few days, needs written approval from the People team "
        "because of tax rules."
    ),
    (
        "Every full-time employee receives 25 working days of annual leave plus public holidays, rising by one day "
        "for each full year of service up to a maximum of 30 days. Part-time colleagues receive the same "
        "entitlement in proportion to their contracted hours. The leave year runs from 1 April to 31 March. Request"
        " leave in the HR portal at least two weeks before the first day off; requests for more than ten "
        "consecutive days need approval from your department head. Up to five unused days may be carried into the "
        "next leave year and must be used by the end of June."
    ),
    (
        "If you are ill and cannot work, phone your manager before 9:00 on the first day, or at least one hour "
        "before your shift starts; a text message or email is not enough. For absences of up to seven calendar days"
        " you fill in a self-certification form in the HR portal when you return. From the eighth day you need a "
        "fit note from a doctor. Northwind pays full salary for the first 20 days of sickness absence in any "
        "rolling twelve months and half salary for the next 20 days, after which statutory sick pay applies."
    ),
    (
        "Birth mothers and primary adopters receive 26 weeks of maternity or adoption leave on full pay, followed "
        "by up to 26 weeks of unpaid leave. Partners receive four weeks of paternity leave on full pay, which can "
        "be taken in one block or in weekly blocks within the first year. Tell the People team about a pregnancy or"
        " adoption at least 15 weeks before the expected week of childbirth or placement. After parental leave you "
        "may ask for flexible working, and we will consider every request seriously."
    ),
    (
        "Northwind observes the eight bank holidays of England and Wales. The office is also closed between "
        "Christmas and New Year, and those three days are given in addition to annual leave. Depot staff who work "
        "on a bank holiday are paid double time and receive a day off in lieu, to be taken within three months. If "
        "a bank holiday falls during your annual leave, it does not count as a day of leave."
    ),
    (
        "Overtime must be approved in advance by your manager. Hours worked beyond your contract are paid at time "
        "and a half on weekdays and Saturdays and at double time on Sundays. Instead of payment you may choose time"
        " off in lieu, hour for hour, to be taken within two months. Managers on grade 7 and above are not paid for"
        " overtime; their salary already reflects longer hours. Nobody should work more than 48 hours in a week "
        "averaged over 17 weeks unless they have signed an opt-out."
    ),
    (
        "Salaries are paid monthly by bank transfer on the 25th of each month; when the 25th falls on a weekend or "
        "bank holiday, you are paid on the last working day before it. Payslips appear in the HR portal three days "
        "before payday. Overtime and shift allowances worked in one month are paid with the next month's salary. "
        "Tell payroll about a change of bank account before the 10th of the month, otherwise the change takes "
        "effect a month later."
    ),
    (
        "Costs you pay on behalf of the company are refunded when you submit a claim in the expenses app within 60 "
        "days, with a photo of each receipt. Claims are approved by your manager and reimbursed with the next "
        "salary payment. Alcohol, fines, parking tickets and personal entertainment are never refunded. Mileage in "
        "your own car on company business is refunded at 45 pence per mile for the first 10,000 miles in a tax year"
        " and 25 pence after that."
    ),
    (
        "Book all work trips through the travel desk at least 14 days ahead so that we get fair prices. Travel by "
        "train is expected for journeys under four hours; flights need approval from a director. Economy class is "
        "standard for every flight; premium economy is allowed only for flights longer than six hours. Colleagues "
        "who travel on company business are insured automatically; carry the insurance card from the travel desk."
    ),
    (
        "When a trip needs an overnight stay, the travel desk books a hotel of mid-range standard. The nightly "
        "limit is 120 pounds in London and 90 pounds elsewhere in the UK, breakfast included. For meals you may "
        "spend up to 35 pounds a day in total, or you can claim a flat subsistence allowance of 25 pounds a day "
        "without receipts. Hotel bars, minibars and films are personal costs."
    ),
    (
        "Sales managers and depot supervisors are eligible for a company car from the approved list, which contains"
        " only hybrid and electric models. The car may be used privately, and benefit-in-kind tax is deducted "
        "through payroll. Fuel for private journeys is not paid by the company; charge electric cars at the depot "
        "chargers free of charge. Any accident, scratch or dent must be reported to the fleet team within 24 hours "
        "with photos."
    ),
    (
        "Every employee receives the equipment the role needs: a laptop for office roles, a rugged handheld scanner"
        " for warehouse roles and a company mobile phone for anyone on call. Equipment remains company property and"
        " must be returned on your last day. A lost or stolen device must be reported to the IT service desk "
        "immediately, so that it can be locked and wiped remotely. Laptops are replaced every four years, phones "
        "every three."
    ),
    (
        "Your password must be at least 14 characters long, and every account must use the authenticator app as a "
        "second factor. Never share passwords, not even with the IT service desk, which will never ask for them. "
        "Lock your screen whenever you leave your desk. Suspicious emails are reported with the Report Phish button"
        " in Outlook; the security team answers every report within one working day. USB memory sticks are blocked "
        "on all company laptops."
    ),
    (
        "We hold personal data about customers, drivers and colleagues, and the law expects us to protect it. Only "
        "access the records you need for your job, and never copy customer lists into personal email or cloud "
        "storage. A data breach, such as an email sent to the wrong customer with a delivery list attached, must be"
        " reported to the data protection officer, Priya Raman, within 24 hours, because the regulator must be told"
        " within 72 hours."
    ),
    (
        "You are welcome to say that you work for Northwind on your private social media, but only the "
        "communications team speaks for the company. Do not post photographs taken inside warehouses, of customer "
        "goods, or of vehicle loads. If a journalist contacts you, pass their details to the communications team "
        "and do not comment yourself. Criticism of customers or colleagues in public posts can lead to disciplinary"
        " action."
    ),
    (
        "Office dress is smart casual; clients visiting the head office expect a tidy appearance, and jeans are "
        "fine on Fridays. In depots and warehouses personal protective equipment is mandatory: safety boots with "
        "steel toecaps, a high-visibility vest and, in the cold store, the insulated jacket provided. Northwind "
        "issues two sets of workwear a year and replaces damaged items free of charge."
    ),
    (
        "Safety comes before speed. Every accident, near miss and dangerous occurrence must be recorded in the "
        "safety app before the end of the shift, even when nobody was hurt. Forklifts may only be driven by "
        "colleagues holding a valid licence, renewed every three years. First aiders wear a green badge; each site "
        "has at least one on every shift. The health and safety manager, Tom Okafor, reviews every report."
    ),
    (
        "When the fire alarm sounds, leave the building by the nearest exit without collecting belongings, and do "
        "not use the lifts. At head office the assembly point is the car park on Wellington Street; at depots it is"
        " marked on the site map by the gatehouse. Fire wardens in yellow vests check each floor and report to the "
        "senior warden. Fire drills are held twice a year, and visitors must be escorted out by their host."
    ),
    (
        "Each employee may spend up to 800 pounds a year on courses, books and conferences that improve their work,"
        " with their manager's approval. Professional qualifications that cost more can be funded through a "
        "learning agreement; if you leave within two years of finishing, you repay a share of the cost. Mandatory "
        "training, such as safety induction and data protection, does not come out of this budget."
    ),
    (
        "Performance reviews take place twice a year, in May and November. Before each review you and your manager "
        "write short notes on what went well, what did not and what support you need. The November review sets "
        "goals for the coming year and gives an overall rating on a four-point scale from exceeds expectations to "
        "below expectations. Ratings are calibrated across departments to keep them fair."
    ),
    (
        "Salaries are reviewed every year with effect from 1 April, based on the November rating, the market and "
        "the company's results. Promotions may happen at any time of year when a higher role is open, and internal "
        "candidates are interviewed first for every vacancy. A promotion brings a salary increase of at least eight"
        " percent. You can see the salary range of every grade on the intranet."
    ),
    (
        "New employees complete a probation period of six months, in which their manager checks in every month. "
        "During probation the notice period on either side is one week. Probation can be extended once by up to "
        "three months when more time is needed to decide. Remote work and the training budget become available once"
        " probation has been passed."
    ),
    (
        "After probation, the notice period is one month for grades 1 to 5 and three months for grade 6 and above, "
        "unless your contract says otherwise. Resign in writing to your manager; an email is fine. Unused annual "
        "leave is paid out in your final salary, while leave taken beyond your entitlement is deducted from it. "
        "Everyone leaving is offered an exit interview with the People team."
    ),
    (
        "Most problems are solved by an informal conversation. When conduct or performance falls short, the formal "
        "procedure starts with a written warning that stays on file for six months, followed by a final written "
        "warning for twelve months. Gross misconduct, such as theft, violence or working under the influence of "
        "alcohol or drugs, can lead to dismissal without notice. You may bring a colleague or a union "
        "representative to every formal meeting."
    ),
    (
        "If you have a complaint about your work, a colleague or a decision, raise it first with your manager, or "
        "with their manager if the complaint concerns them. If that does not resolve it within 14 days, write to "
        "the People team to start a formal grievance. Concerns about fraud, danger or illegal behaviour can be "
        "reported anonymously to the independent Safecall line, 0800 915 1571, open around the clock."
    ),
    (
        "Gifts and hospitality from suppliers or customers can influence decisions. You may accept small gifts "
        "worth up to 50 pounds, such as a bottle of wine at Christmas, but every gift above 25 pounds must be "
        "recorded in the gifts register. Cash, vouchers and gifts during a tender are always refused. Offering "
        "anything of value to win business is bribery and leads to dismissal."
    ),
    (
        "A second job is allowed if it does not compete with Northwind, does not use company time or equipment, and"
        " does not prevent rest between shifts. Tell your manager before you start it. Any personal relationship "
        "with a supplier or customer that could affect your judgement, such as a relative who owns a haulage firm, "
        "must be declared on the conflicts form."
    ),
    (
        "Every employee is enrolled in the company pension plan after three months of service. You contribute 5 "
        "percent of your salary and Northwind adds 7 percent; if you raise your own contribution to 7 percent, the "
        "company matches it with 9 percent. You can opt out at any time in the pension portal, although you will be"
        " enrolled again every three years as the law requires."
    ),
    (
        "Private medical insurance with Bupa covers every employee after probation, and you may add your partner "
        "and children at a reduced rate deducted from your salary. The cover includes specialist consultations, "
        "hospital treatment and physiotherapy, but not routine dental care. An online GP service is available to "
        "everyone from the first day, twenty-four hours a day."
    ),
    (
        "If you recommend someone who joins Northwind and passes probation, you receive a referral bonus of 1,000 "
        "pounds, paid with the salary after their probation ends. Referrals for hard-to-fill roles such as HGV "
        "drivers and engineers earn 1,500 pounds. Submit referrals through the careers site with your employee "
        "number before the candidate applies."
    ),
    (
        "The head office car park has 120 spaces, allocated first to colleagues with a blue badge and to car "
        "sharers; apply for a permit in the HR portal. There is secure storage for 60 bicycles, and showers and "
        "lockers are on the ground floor. Through the cycle to work scheme you can buy a bicycle up to 2,000 pounds"
        " and repay it from your gross salary over twelve months."
    ),
    (
        "The staff restaurant at head office is open from 7:30 to 14:30 and serves breakfast, hot lunches and a "
        "salad bar at subsidised prices. Depots have kitchens with fridges, microwaves and free tea and coffee. "
        "Meals are paid with your staff card, which also opens the doors. Please clear your tray and keep shared "
        "fridges tidy; fridges are emptied every Friday afternoon."
    ),
    (
        "All visitors sign in at reception and wear a red visitor badge; their host collects them and stays with "
        "them at all times. Contractors working in warehouses need a safety briefing before they start. Staff must "
        "wear their own photo badge visibly on site, and a lost badge should be reported to facilities at once so "
        "that it can be cancelled."
    ),
    (
        "Head office is open from 6:30 to 20:00 on weekdays. Outside those hours, and at weekends, the building can"
        " only be entered with a badge that has out-of-hours access, which your department head can request from "
        "facilities. The depots operate around the clock and are never closed. Alarm codes must not be shared or "
        "written down."
    ),
    (
        "Print only what you need; printers release documents only when you tap your badge. Documents marked "
        "confidential must never be left on desks overnight, in line with our clear desk rule. Paper containing "
        "personal or customer data goes into the locked blue shredding bins, which an approved contractor empties "
        "every week; never put it in ordinary recycling."
    ),
    (
        "Northwind gives every employee two paid volunteering days a year to help a charity or community project of"
        " their choice. Teams can also volunteer together, for instance at food banks we deliver to. Book "
        "volunteering days in the HR portal like annual leave, choosing the volunteering type. Money you raise for "
        "charity is matched by the company up to 500 pounds per person each year."
    ),
    (
        "Your wellbeing matters. The employee assistance programme offers free, confidential counselling, legal and"
        " financial advice by phone, available 24 hours a day; up to six counselling sessions per issue are paid "
        "for. Trained mental health first aiders work in every department, and their names are on the intranet. "
        "Talk to your manager early if work is affecting your health."
    ),
    (
        "This handbook is owned by the People team and reviewed every January. Changes are announced on the "
        "intranet and take effect one month after they are published. For questions about pay contact payroll, for "
        "equipment the IT service desk, and for anything else the People team at people@northwind.example or on "
        "extension 4400. This version was published on 1 February 2025."
    ),
)

HANDBOOK_ZH = (
    (
        "欢迎加入星河电子。公司成立于2006年，总部位于苏州工业园区，在深圳和成都设有研发中心，目前共有员工"
        "2300余人，主要生产工业传感器和智能电表。本手册说明适用于全体员工的规章制度和福利待遇。如果地方性"
        "协议与本手册不一致，以地方性协议为准。请在入职第一周内通读本手册，遇到具体问题时再查阅相应章节。"
    ),
    (
        "公司实行标准工时制，每周工作40小时，周一至周五上班。办公室员工可以在早上8点至9点半之间弹性到岗，"
        "但每天10点至16点为核心工作时间，必须在岗。午休时间为12点至13点，不计入工作时间。生产车间实行"
        "两班倒，班次表每月25日前在车间公告栏公布，员工之间调班须经班组长同意。"
    ),
    (
        "通过试用期的职能部门员工每周最多可以居家办公两天，具体安排须与直属上级商定并在人事系统中登记。居家办"
        "公期间必须使用公司配发的笔记本电脑，并通过公司虚拟专用网络访问内部系统。公司每月发放150元居家办公"
        "补贴，随工资一并发放。生产、质检和仓储岗位不适用居家办公。"
    ),
    (
        "员工享受带薪年休假。累计工作已满1年不满10年的，年休假5天；已满10年不满20年的，年休假10天；"
        "已满20年的，年休假15天。在此基础上，公司每年额外给予3天福利假。年假须至少提前一周在人事系统中提"
        "交申请，连续休假超过5天须部门总监审批。当年未休完的年假最多可顺延至次年3月31日，逾期作废。"
    ),
    (
        "员工因病不能上班的，应在当天上班前通过电话或企业微信向直属上级请假。病假1天以内可以事后补交说明，连"
        "续病假2天及以上须提供二级以上医院出具的诊断证明。病假期间，公司按本人基本工资的80%支付病假工资，"
        "每年累计超过30天的部分按当地最低工资标准支付。"
    ),
    (
        "女员工生育享受158天产假，其中包括国家规定的98天和江苏省增加的60天；难产的增加15天，多胞胎生"
        "育的每多生育一个婴儿增加15天。男员工在配偶生育期间享受15天陪产假，须在子女出生后一个月内休完。产"
        "假和陪产假期间工资照常发放，生育津贴由社会保险基金支付给公司。"
    ),
    (
        "公司按照国家规定安排元旦、春节、清明节、劳动节、端午节、中秋节和国庆节等法定节假日。春节期间公司在法"
        "定假期基础上另外放假2天，具体日期由行政部每年12月公布。因生产需要在法定节假日安排员工上班的，按本"
        "人日工资的300%支付加班工资，不安排补休。"
    ),
    (
        "加班须事先通过人事系统提交申请，经部门经理批准后方可进行，未经批准的加班不予认可。工作日延长工作时间"
        "的，按小时工资的150%支付加班费；休息日加班的，优先安排同等时长的调休，无法调休的按200%支付。"
        "每月加班时间累计不得超过36小时。经理及以上职级实行综合工时，不另计加班费。"
    ),
    (
        "公司每月10日通过银行代发上月工资，如遇节假日则提前到最近的工作日发放。工资条在发薪前一天推送至员工"
        "的企业微信。加班费、夜班津贴和绩效奖金随次月工资一起发放。员工如需变更工资卡，应在每月5日前向财务部"
        "提交新的银行卡复印件，否则次月生效。"
    ),
    (
        "员工因公垫付的费用，应在费用发生后30天内通过报销系统提交申请，并上传发票的电子版或照片。报销单经直"
        "属上级和财务部审核后，在每周四统一打款到员工的工资卡。超过30天提交的报销申请须由部门总监特批。烟酒"
        "、罚款、个人娱乐消费一律不予报销。"
    ),
    (
        "员工出差须提前在差旅平台提交出差申请并订票。高铁和动车一律乘坐二等座；乘坐飞机须部门总监批准，原则上"
        "乘坐经济舱。出差补贴按天计算：一线城市每天100元，其他城市每天80元，包含市内交通和餐费，无须提供"
        "发票。出差期间因私延长停留的费用由员工个人承担。"
    ),
    (
        "出差住宿由差旅平台统一预订，标准为：北京、上海、广州、深圳每晚不超过500元，省会城市每晚不超过40"
        "0元，其他城市每晚不超过300元。超出标准的部分由员工自行承担。两名同性别员工同行出差的，原则上合住"
        "一间标准间。酒店内的迷你吧、洗衣等个人消费不予报销。"
    ),
    (
        "销售经理和区域服务工程师可以申请公司公务用车。公务用车仅限于工作用途，下班后应停放在公司停车场，节假"
        "日不得私用。驾驶公务车须持有三年以上驾龄的驾驶证。车辆发生事故、刮擦或违章，驾驶人须在24小时内向行"
        "政部报告并提供照片，因个人原因产生的违章罚款由驾驶人承担。"
    ),
    (
        "公司根据岗位需要为员工配发笔记本电脑、手机或手持终端等办公设备。设备归公司所有，离职时须完好归还，丢"
        "失或人为损坏的须按折旧后价值赔偿。笔记本电脑的更换周期为四年。设备丢失或被盗的，应立即联系信息技术部"
        "服务台，以便远程锁定和清除数据。"
    ),
    (
        "所有系统账户的密码长度不得少于12位，且必须包含大小写字母、数字和特殊符号，每90天更换一次。登录公"
        "司邮箱和内部系统须开启手机动态口令验证。离开座位时必须锁屏。收到可疑邮件时，请使用邮件客户端中的举报"
        "按钮提交给信息安全组，切勿点击其中的链接或附件。公司电脑禁止使用未经登记的U盘。"
    ),
    (
        "公司掌握大量客户资料、供应商信息和员工个人信息，必须依法保护。员工只能访问工作所需的数据，不得将客户"
        "名单或产品图纸发送到个人邮箱、网盘或微信。发现数据泄露，例如把含有客户信息的报表发给了错误的收件人，"
        "必须在2小时内报告信息安全负责人陈思远，由他判断是否需要向监管部门报告。"
    ),
    (
        "员工可以在个人社交媒体上提到自己在星河电子工作，但只有品牌部有权代表公司对外发言。禁止在朋友圈、微博"
        "或短视频平台发布车间、实验室、新产品样机的照片或视频。如有记者联系采访，请礼貌地把对方的联系方式转交"
        "品牌部，不要自行回答。"
    ),
    (
        "办公区域着装以商务休闲为主，接待客户时须穿正装，每周五可以穿休闲服装。进入生产车间必须穿防静电工作服"
        "和防静电鞋，佩戴工作帽；进入无尘车间还须按规定穿戴连体洁净服、口罩和手套。公司每年为一线员工免费发放"
        "两套工作服，损坏后可以凭旧衣更换。"
    ),
    (
        "安全生产人人有责。任何事故、未遂事件和安全隐患，都必须在当班结束前通过安全平台上报，即使没有人员受伤"
        "。叉车和行车只能由持有有效特种作业操作证的人员操作，证书每四年复审一次。每个车间每个班次至少安排一名"
        "急救员，急救员佩戴绿色臂章。安全部经理王建国负责审核全部事故报告。"
    ),
    (
        "火警铃响起时，所有人员应立即沿最近的疏散通道撤离，不得携带个人物品，严禁乘坐电梯。苏州总部的紧急集合"
        "点为东门外的篮球场，各厂区的集合点标注在门卫室旁的平面图上。各楼层消防员身穿橙色马甲，负责清点本层人"
        "数并向安全部报告。公司每年组织两次消防演练，访客由接待人负责带领撤离。"
    ),
    (
        "公司鼓励员工持续学习。每名员工每年可以申请最高5000元的培训费用，用于参加外部课程、购买专业书籍或"
        "参加行业会议，须经直属上级批准。费用超过1万元的学历教育或职业资格认证，须签订培训协议，服务期为两年"
        "，未满服务期离职的按比例退还培训费用。公司组织的安全培训和入职培训不占用个人额度。"
    ),
    (
        "公司每半年进行一次绩效考核，分别在1月和7月。考核前，员工先完成自评，再由直属上级评价并进行面谈。考"
        "核结果分为A、B、C、D四个等级，其中A级比例一般不超过20%。考核结果作为调薪、晋升和年终奖发放的"
        "主要依据，连续两次考核为D级的员工将进入绩效改进计划。"
    ),
    (
        "公司每年4月进行一次调薪，调薪幅度根据年度绩效、市场薪酬水平和公司经营情况确定。职位出现空缺时，优先"
        "从内部选拔，员工可以通过内部招聘平台自荐。晋升一级的员工，基本工资上调幅度不低于10%。各职级的薪酬"
        "范围在内网上公开。"
    ),
    (
        "新员工试用期为三个月，技术类岗位为六个月。试用期内，直属上级每月与员工进行一次面谈，并在试用期结束前"
        "两周完成转正评估。试用期内员工提前3天通知即可解除劳动合同。试用期表现不符合要求的，公司可以依法解除"
        "劳动合同。居家办公和培训额度自转正后开始享受。"
    ),
    (
        "员工转正后主动辞职的，应提前30天以书面形式通知公司；经理及以上职级须提前60天通知。辞职申请提交给"
        "直属上级，并抄送人事部。离职前须完成工作交接、归还公司财物并结清借款。未休年假按国家规定折算工资发放"
        "。人事部会为每位离职员工安排离职面谈。"
    ),
    (
        "大多数问题可以通过沟通解决。员工违反公司制度的，视情节轻重给予口头警告、书面警告或解除劳动合同。书面"
        "警告在员工档案中保留一年。严重违纪行为，例如盗窃、打架斗殴、酒后上岗或伪造报销单据，公司可以立即解除"
        "劳动合同且不支付经济补偿。员工在纪律处分面谈时可以邀请一名同事陪同。"
    ),
    (
        "员工对工作安排、同事或公司决定有意见的，应首先向直属上级反映；如果问题涉及直属上级，可以向上一级经理"
        "反映。7个工作日内仍未解决的，可以书面向人事部提出正式申诉。对于舞弊、安全隐患或违法行为，员工可以通"
        "过审计部的举报邮箱jubao@xinghe.example匿名举报，公司保护举报人。"
    ),
    (
        "员工不得索取或收受供应商、客户的现金、购物卡、有价证券。价值200元以下的节日礼品可以接受，但须在礼"
        "品登记表上登记；价值超过200元的礼品应婉拒，无法退回的交行政部统一处理。在招标期间，任何礼品和宴请"
        "一律谢绝。向他人提供贿赂以获取业务的，一经查实立即解除劳动合同。"
    ),
    (
        "员工在工作之外从事兼职，不得与公司业务形成竞争，不得占用工作时间或使用公司设备，并须事先向人事部报备"
        "。员工的直系亲属在供应商或客户处担任管理职务，或者员工本人持有供应商股份的，应在利益冲突申报表中如实"
        "申报，每年一月更新一次。"
    ),
    (
        "公司依法为员工缴纳养老、医疗、失业、工伤和生育保险以及住房公积金。住房公积金的缴存比例为单位和个人各"
        "12%。此外，公司为工作满一年的员工建立企业年金，公司按工资的4%缴费，个人按1%缴费。员工可以在人"
        "事系统中查询每月的缴费明细。"
    ),
    (
        "除社会医疗保险外，公司为全体员工购买补充医疗保险，报销门诊和住院费用中社保报销后的自付部分，每年门诊"
        "报销上限为3000元。员工的子女可以以优惠价格加入。公司每年安排一次免费体检，40岁以上员工的体检增"
        "加胃镜和心脏彩超项目。"
    ),
    (
        "员工推荐的候选人被录用并通过试用期的，推荐人可以获得内部推荐奖金。普通岗位每人奖励2000元，芯片设"
        "计和算法工程师等紧缺岗位每人奖励8000元。奖金在被推荐人转正后的次月随工资发放。推荐须在候选人投递"
        "简历之前，通过内部招聘平台提交。"
    ),
    (
        "苏州总部地下停车场共有300个车位，员工可以在行政部申请停车证，每月收取停车费100元，新能源汽车可"
        "以免费使用充电桩。公司在园区地铁站与总部之间开通了班车，早上7点至9点每15分钟一班。骑电动自行车上"
        "班的员工请把车辆停放在北门车棚，禁止在楼内充电。"
    ),
    (
        "总部员工餐厅提供早餐、午餐和晚餐，营业时间为早上7点至晚上7点半。公司每个工作日为员工发放午餐补贴2"
        "5元，直接充入员工卡，当月有效，不可提现。各厂区设有茶水间，提供免费的茶叶、咖啡和饮用水。请自觉将餐"
        "盘送回回收处。"
    ),
    (
        "所有访客须在前台登记并佩戴访客证，由接待人全程陪同。供应商人员进入生产车间前须接受安全告知。员工在公"
        "司内须佩戴工牌，工牌遗失应当天向行政部报告挂失，补办工牌须缴纳工本费20元。"
    ),
    (
        "苏州总部大楼的开放时间为工作日早上7点至晚上10点。其他时间以及周末进入大楼须使用开通了加班门禁权限"
        "的工牌，门禁权限由部门经理向行政部申请。生产厂区24小时运转。门禁密码和保险柜密码不得告诉他人，也不"
        "得写在纸上。"
    ),
    (
        "打印文件时须刷工牌取件，避免他人误取。标注为机密的文件下班后不得留在桌面上，应锁进文件柜。含有个人信"
        "息或客户信息的纸质文件应放入蓝色的保密文件销毁箱，由指定的保密公司每两周上门粉碎一次，不得扔进普通垃"
        "圾桶。"
    ),
    (
        "公司鼓励员工参与公益活动，每名员工每年享有1天带薪志愿者假，可以参加公司组织的植树、助学等活动，也可"
        "以自选公益机构。志愿者假须在人事系统中申请。员工个人向公益机构捐款的，公司按一比一配捐，每人每年配捐"
        "上限为1000元。"
    ),
    (
        "公司为员工提供员工帮助计划，员工及其家属可以通过热线电话获得免费、保密的心理咨询、法律咨询和理财咨询"
        "，热线每天24小时开通，每人每年可以享受6次免费面对面心理咨询。各部门设有经过培训的心理关爱联络员，"
        "名单在内网公布。"
    ),
    (
        "本手册由人力资源部负责解释和修订，每年一月复核一次。修订内容在内网公告，公告一个月后生效。工资问题请"
        "联系财务部，设备问题请联系信息技术部服务台，其他问题请联系人力资源部，邮箱hr@xinghe.exa"
        "mple，内线电话8800。本版手册于2025年2月1日发布。"
    ),
)

# (question, page (1-based), words of the answer on that page)
QUESTIONS_EN = (
    ("I'm off sick with the flu. From which day of absence do I need a note from a doctor?", 5, "eighth day"),
    ("How much may a hotel room in London cost per night when I travel for work?", 12, "120 pounds in London"),
    (
        "How many weeks of paternity leave on full pay can I take after my partner gives birth?",
        6,
        "four weeks of paternity leave",
    ),
    ("On which day of the month does my pay arrive in my bank account?", 9, "25th of each month"),
    ("If I pay the standard amount into my pension, what does the company add?", 30, "Northwind adds 7 percent"),
    (
        "I sent a customer's personal details to the wrong address by mistake. Who must I report it to?",
        16,
        "Priya Raman",
    ),
    ("What bonus do I get if I recommend an HGV driver who is hired?", 32, "1,500 pounds"),
    ("How many days a week am I allowed to work from home?", 3, "three days a week"),
    ("What yearly budget do I have for courses, books and conferences?", 21, "800 pounds"),
    ("Where should we gather outside head office when the fire alarm goes off?", 20, "Wellington Street"),
)
QUESTIONS_ZH = (
    ("我已经工作了12年，每年能休几天年假？", 4, "年休假10天"),
    ("在上海出差住酒店，一晚最多能花多少钱？", 12, "每晚不超过500元"),
    ("妻子生育时，男职工可以休多少天假？", 6, "15天陪产假"),
    ("每个月几号发工资？", 9, "每月10日"),
    ("企业年金里公司替我缴多少？", 30, "公司按工资的4%缴费"),
    ("把客户数据发给了错误的人，应该向谁报告？", 16, "陈思远"),
    ("介绍一位算法工程师入职并转正，能拿多少奖励？", 32, "8000元"),
    ("每周能在家办公几天？", 3, "居家办公两天"),
    ("参加外部培训课程，公司一年最多给多少钱？", 21, "5000元"),
    ("总部发生火灾时，大家应该到哪里集合？", 20, "篮球场"),
)
